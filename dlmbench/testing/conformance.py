"""The conformance kit: what every model plugin must satisfy, as a pytest base class.

A plugin author writes (this is what ``dlmbench new-plugin`` generates)::

    from dlmbench.testing.conformance import ModelConformance

    class TestMyModel(ModelConformance):
        model_name = "mymodel"

and runs ``pytest``. The model is found through the installed ``dlmbench`` entry
points, exactly as ``dlmbench run`` finds it. The checks run on a small random corpus
(no task needed): registration, config round-trip and strictness, a finite loss that
backpropagates, the likelihood bound's shape, every registered sampler's output shape,
id range, prefix handling, step budget and NFE accounting, seeded determinism and a
save/load round-trip. Every check runs on one intra-op thread (the ``one_thread``
fixture of :mod:`dlmbench.testing.pytest_plugin`): the models are tiny.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from pydantic import ValidationError

from dlmbench.data import Batch, DataSpec
from dlmbench.model import Model
from dlmbench.nfe import count_nfe
from dlmbench.sampling import generate
from dlmbench.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID

VOCAB, SEQ_LEN = 40, 16


def random_tokens(spec: DataSpec, rows: int, seed: int = 0) -> torch.Tensor:
    """Rows of ordinary tokens ending in EOS padding, the shape every task produces."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, spec.vocab_size, (rows, spec.seq_len), generator=g)
    lengths = torch.randint(spec.seq_len // 2, spec.seq_len, (rows,), generator=g)
    positions = torch.arange(spec.seq_len)
    tokens[positions[None, :] >= lengths[:, None]] = spec.eos_id
    return tokens


@pytest.mark.usefixtures("one_thread")
class ModelConformance:
    """Subclass and set ``model_name``; optionally ``preset``, ``options``, ``steps``."""

    model_name: ClassVar[str] = ""
    preset: ClassVar[str | None] = "tiny"
    options: ClassVar[dict[str, Any]] = {}
    steps: ClassVar[tuple[int, ...]] = (1, 4)
    conditional: ClassVar[bool] = True
    num_samples: ClassVar[int] = 3

    # fixtures ------------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def registry(cls):
        from dlmbench.plugins import load_registry

        return load_registry()

    @pytest.fixture(scope="class", params=["unconditional", "conditional"])
    @classmethod
    def spec(cls, request) -> DataSpec:
        prefix = SEQ_LEN // 2 if request.param == "conditional" else 0
        if prefix and not cls.conditional:
            pytest.skip(f"{cls.model_name} does not support conditional tasks")
        return DataSpec(VOCAB, SEQ_LEN, PAD_ID, BOS_ID, EOS_ID, MASK_ID, prefix_len=prefix)

    def make(self, registry, spec: DataSpec, seed: int = 0) -> Model:
        cls = registry.model(self.model_name)
        torch.manual_seed(seed)
        return cls(cls.Config.from_preset(self.preset, **self.options), spec)

    def prefixes(self, spec: DataSpec, n: int) -> torch.Tensor | None:
        return random_tokens(spec, n, seed=7)[:, : spec.prefix_len] if spec.prefix_len else None

    # checks --------------------------------------------------------------------------------
    def test_registered(self, registry):
        cls = registry.model(self.model_name)
        assert issubclass(cls, Model) and cls.name == self.model_name, \
            f"{cls!r} registered as {self.model_name!r}: a dlmbench.Model subclass with name = {self.model_name!r}"
        assert registry.samplers_for(self.model_name), "register at least one sampler"
        assert cls.default_sampler in registry.samplers_for(self.model_name), (
            f"default_sampler = {cls.default_sampler!r}, but {self.model_name!r} has the samplers "
            f"{registry.samplers_for(self.model_name)}; set default_sampler to one of them")

    def test_config_round_trip_and_strict(self, registry):
        cls = registry.model(self.model_name)
        config = cls.Config.from_preset(self.preset, **self.options)
        assert cls.Config.model_validate_json(config.model_dump_json()) == config
        with pytest.raises(ValidationError):
            cls.Config(**{**config.model_dump(), "no_such_option_xyz": 1})

    def test_loss_finite_and_backpropagates(self, registry, spec):
        model = self.make(registry, spec)
        model.train()
        loss = model.loss(Batch(random_tokens(spec, 4)))
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in model.trainable_parameters() if p.grad is not None]
        assert grads, "no parameter received a gradient"
        assert any(float(g.abs().sum()) > 0 for g in grads)
        assert all(torch.isfinite(g).all() for g in grads)

    def test_nelbo_shape(self, registry, spec):
        model = self.make(registry, spec).eval()
        with torch.no_grad():
            bound = model.nelbo(Batch(random_tokens(spec, 3)))
        if bound is not None:
            assert bound.shape == (3,) and torch.isfinite(bound).all() and (bound >= 0).all()

    def test_samplers_respect_budget_and_nfe(self, registry, spec):
        model = self.make(registry, spec).eval()
        for name in registry.samplers_for(self.model_name):
            sampler = registry.sampler(self.model_name, name)()
            for steps in self.steps:
                prefix = self.prefixes(spec, self.num_samples)
                run = generate(model, sampler, steps, self.num_samples, seed=0, prefixes=prefix)
                ids = run.ids
                assert ids.shape == (self.num_samples, spec.seq_len) and ids.dtype == torch.long
                assert int(ids.min()) >= 0 and int(ids.max()) < spec.vocab_size
                if prefix is not None:
                    assert torch.equal(ids[:, : spec.prefix_len], prefix), f"{name} changed the prefix"
                bound = sampler.max_nfe(steps, spec)
                assert run.nfe <= bound, f"{name}: NFE {run.nfe} > declared bound {bound} at {steps} steps"
                if sampler.exact_nfe():
                    assert run.nfe == bound, f"{name}: NFE {run.nfe} != {bound} at {steps} steps"
                assert run.nfe > 0

    def test_nfe_counter_sees_the_network(self, registry, spec):
        model = self.make(registry, spec).eval()
        with count_nfe(model) as counter, torch.no_grad():
            sampler = registry.sampler(self.model_name)()
            generate(model, sampler, self.steps[-1], 2, seed=0, prefixes=self.prefixes(spec, 2))
        assert counter.calls > 0, "model.network's forward was never called by the sampler"

    def test_seed_determinism(self, registry, spec):
        model = self.make(registry, spec).eval()
        sampler = registry.sampler(self.model_name)()
        prefix = self.prefixes(spec, 4)
        a = generate(model, sampler, self.steps[-1], 4, seed=3, prefixes=prefix).ids
        b = generate(model, sampler, self.steps[-1], 4, seed=3, prefixes=prefix).ids
        assert torch.equal(a, b), (
            f"sampler {sampler.name!r} gave other ids on the same seed at {int((a != b).sum())} of {a.numel()} "
            "positions: draw every random number from request.generator (dlmbench.categorical helps)")

    def test_save_load_round_trip(self, registry, spec, tmp_path_factory):
        from dlmbench.checkpoint import checkpoint_key, load_checkpoint, save_checkpoint, state_dict_equal

        model = self.make(registry, spec, seed=1)
        with torch.no_grad():  # move off the initialisation so zero-init heads are tested too
            for p in model.trainable_parameters():
                p.add_(0.01 * torch.randn_like(p))
        key = checkpoint_key(self.model_name, model.config, spec, {"test": True})
        path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
        save_checkpoint(model, path, key)
        fresh = self.make(registry, spec, seed=2)
        load_checkpoint(fresh, path, key)
        assert state_dict_equal(model, fresh)
        sampler = registry.sampler(self.model_name)()
        prefix = self.prefixes(spec, 2)
        a = generate(model.eval(), sampler, self.steps[-1], 2, seed=5, prefixes=prefix).ids
        b = generate(fresh.eval(), sampler, self.steps[-1], 2, seed=5, prefixes=prefix).ids
        assert torch.equal(a, b), (
            "the weights survived the round trip but the samples did not: the model keeps state outside "
            "its state_dict, or the sampler is not seeded (see test_seed_determinism)")
