"""Model configs: YAML files in ``model_configs/`` choose the encoder, the head, training and the strategy.

Validated with pydantic so a typo in a YAML file fails at load with the field's name, not deep inside torch.
A version's config is saved next to its weights, so every version can be rebuilt from its config and seed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ml_backend.core.selection import active_weights
from ml_backend.core.stopping import BUDGET, CRITERIA, KAPPA
from ml_backend.core.strategies import STRATEGIES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EncoderConfig(_Strict):
    """Where the pretrained network comes from and how inputs are prepared for it.

    ``pretrained``: a Hugging Face id (``bert-base-uncased``), a local folder, ``python-package:<module>`` for
    weights shipped inside a PyPI package, or for images ``efficientnet-lite0`` / ``torchvision:<name>``.
    """

    pretrained: str
    weights: str | None = Field(None, description="Image backbones: weights file, python-package:<module> or DEFAULT")
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = Field(256, ge=8, description="Text: tokens per input; longer text is truncated.")
    image_size: int = Field(224, ge=32, description="Images are resized to this square size.")
    batch_size: int = Field(32, ge=1)
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="Text: 'int8' runs the encoder's Linear layers with dynamic int8 quantization (faster on CPU, "
        "embeddings close to but not equal to fp32's, cached under their own fingerprint). With runtime: torch the "
        "activations have one scale per batch (a vector depends on its batch), with runtime: onnx one per token.",
    )
    runtime: Literal["torch", "onnx"] = Field(
        "torch",
        description="Text: 'onnx' exports the encoder at load time and runs it in ONNX Runtime (pip install "
        "'al-ml-backend[onnx]'), with as many threads as torch; same vectors as torch's within 1e-5, so the "
        "embedding cache is shared.",
    )


class HeadConfig(_Strict):
    hidden: int = Field(
        256,
        ge=0,
        description="Width of the MLP head's hidden layer; 0: a linear head (dropout -> linear), the linear probe "
        "sentence embeddings are made for.",
    )
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    members: int = Field(
        1,
        ge=1,
        le=32,
        description="Heads in the committee (a deep ensemble): their mean predicts, their disagreement is part of "
        "the uncertainty; trained in one batched pass.",
    )


class TrainingConfig(_Strict):
    mode: Literal["head", "full"] = Field(
        "head", description="head: frozen encoder, cached embeddings (seconds); full: fine-tune the encoder too"
    )
    epochs: int = Field(60, ge=1)
    min_steps: int = Field(
        600,
        ge=0,
        description="Train the head for at least this many optimizer steps, however few the labels (60 epochs of "
        "20 labels are only 60 steps: an under-trained head).",
    )
    full_epochs: int = Field(3, ge=1, description="Epochs of full fine-tuning (mode: full).")
    lr: float = Field(1e-3, gt=0)
    encoder_lr: float = Field(2e-5, gt=0, description="Learning rate of the encoder in full fine-tuning.")
    weight_decay: float = Field(
        1e-4,
        ge=0,
        description="AdamW's decoupled decay: each step shrinks the weights by lr x weight_decay, so at lr 1e-3 even "
        "1e-2 takes only ~1 % off per 1,000 steps (measured on Fashion-MNIST features: the same accuracy as 1e-4 "
        "from 50 to 600 labels); the head's regularisers that act are dropout and the number of steps.",
    )
    batch_size: int = Field(32, ge=1)
    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of labelled tasks held out for evaluation.")
    min_labels_for_holdout: int = Field(
        10, ge=2, description="Below this many labels, train on all and skip the comparison."
    )
    promote_if_not_worse: bool = Field(
        True,
        description="Keep the current version if the new one is significantly worse on held-out tasks neither "
        "was trained on.",
    )
    promote_tolerance: float = Field(
        0.0, ge=0.0, description="Accuracy the new version may lose and still be promoted."
    )
    promote_min_fair: int = Field(
        10, ge=1, description="Fewer fair held-out tasks than this: promote (no evidence either way)."
    )
    promote_alpha: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="Keep the current version only if the new one is worse with this significance "
        "(one-sided sign test).",
    )
    seed: int = 0


class AcquisitionConfig(_Strict):
    strategy: str = "bald"
    mc_samples: int = Field(20, ge=1)
    mc_mode: Literal["head", "full", "laplace"] = Field(
        "head",
        description="head: T MC-dropout passes over the head only; full: T passes through the whole network; "
        "laplace: T weight samples of a Laplace posterior over the head's last layer (models/laplace.py)",
    )
    cold_start_neighbours: int = Field(
        10, ge=1, description="Neighbours for density and the coverage kernel's bandwidth."
    )
    front_size: int = Field(
        100, ge=0, description="Queue positions ordered batch-aware (coverage-greedy); 0 = plain top-k."
    )
    explore_every: int = Field(
        3,
        ge=0,
        description="Every n-th pick of the batch-aware front is a coverage (exploration) pick, away from what is "
        "labelled and picked; 0 = none. While a class has no label, every 2nd pick is one.",
    )
    front: Literal["coverage", "badge"] = Field(
        "coverage",
        description="How the learn picks of the front are made: coverage (the most uncertain, discounted by what "
        "the front's earlier picks cover) or badge (k-means++ draws over last-layer gradient embeddings).",
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: {"uncertainty": 1.0},
        description="Hybrid value: weights of uncertainty, novelty and density (rank-normalised).",
    )
    power: float = Field(
        0.0,
        ge=0.0,
        description="Stochastic power acquisition (Kirsch et al. 2023): the learn picks of the front draw tasks "
        "with probability proportional to value**power (Gumbel-top-k, seeded by the version) instead of taking "
        "the largest values; 0 = off (deterministic).",
    )
    balance: bool = Field(
        False,
        description="Class balancing (small-text's ClassBalancer): each learn pick of the front comes from the "
        "predicted class with the fewest labels so far. Single-choice projects with at least balance_min_classes "
        "classes (a multi-label project has no one predicted class per task, so it is not balanced); not with "
        "front: badge. Off unless a config sets it; the shipped configs do.",
    )
    balance_min_classes: int = Field(
        3,
        ge=2,
        description="Balance only projects with at least this many classes (2: every single-choice project). With "
        "two classes there is one border, and the most uncertain tasks already lie on both sides of it; measured "
        "on a balanced two-class set, balancing lost (README, 'Class-balanced learn picks').",
    )

    @model_validator(mode="after")
    def _balance_needs_coverage_front(self) -> AcquisitionConfig:
        """BADGE's learn picks are k-means++ draws, not a per-class choice: refuse the mix instead of ignoring it."""
        if self.balance and self.front == "badge":
            raise ValueError("acquisition.balance needs acquisition.front: coverage (BADGE draws its own picks)")
        return self

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; choose one of {sorted(STRATEGIES)}")
        return value

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in value.values()):
            raise ValueError(f"weights must be >= 0, got {value}")
        active_weights(value)
        return value


class StoppingConfig(_Strict):
    """When the dashboard and status say "stop labelling" (``core.stopping``), and whether training then stops."""

    kappa: float = Field(0.99, gt=0.0, le=1.0, description="Stable predictions: mean kappa of consecutive versions.")
    window: int = Field(3, ge=1, description="Versions the kappa mean and the accuracy plateau look back over.")
    uncertainty: float = Field(0.1, ge=0.0, le=1.0, description="Pool uncertainty indicator: mean at most this.")
    plateau_tolerance: float = Field(0.01, ge=0.0, description="Accuracy plateau: gain below this over the window.")
    decisive: list[str] = Field(
        default_factory=lambda: [KAPPA, BUDGET],
        description="Criteria whose firing means stop (the others are shown as indicators).",
    )
    label_budget: int | None = Field(
        None, ge=1, description="Labels the project may spend (LS extra params 'label_budget' overrides it)."
    )
    stop_training: bool = Field(False, description="Stop retraining once the stopping signal says stop.")

    @field_validator("decisive")
    @classmethod
    def _known_criteria(cls, value: list[str]) -> list[str]:
        unknown = set(value) - set(CRITERIA)
        if unknown:
            raise ValueError(f"unknown stopping criteria {sorted(unknown)}; choose from {list(CRITERIA)}")
        return value


class ModelConfig(_Strict):
    """One model family and how it learns and scores; ``name`` prefixes every model version it produces."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["text", "image"]
    encoder: EncoderConfig
    head: HeadConfig = HeadConfig()
    training: TrainingConfig = TrainingConfig()
    acquisition: AcquisitionConfig = AcquisitionConfig()
    stopping: StoppingConfig = StoppingConfig()

    @model_validator(mode="after")
    def _mc_strategies_need_dropout(self) -> ModelConfig:
        """BALD and variation ratio measure disagreement between MC passes: without two passes and something that
        varies between them (dropout, or the Laplace posterior's weight samples) every task scores 0 and the queue
        is ordered by noise. Refuse such a config at load time."""
        acq = self.acquisition
        sampled = acq.mc_mode == "laplace" or self.head.dropout > 0
        if STRATEGIES[acq.strategy].needs_mc and (acq.mc_samples < 2 or not sampled):
            raise ValueError(
                f"strategy {acq.strategy!r} needs acquisition.mc_samples >= 2 and head.dropout > 0 or "
                f"acquisition.mc_mode: laplace (got {acq.mc_samples}, {self.head.dropout} and {acq.mc_mode!r})"
            )
        return self

    @model_validator(mode="after")
    def _laplace_one_head(self) -> ModelConfig:
        """The Laplace posterior is over one head's last layer; a committee's members would each need their own,
        and their disagreement already is the committee's uncertainty. Refuse the mix instead of ignoring it."""
        if self.acquisition.mc_mode == "laplace" and self.head.members > 1:
            raise ValueError("acquisition.mc_mode: laplace needs head.members: 1 (one head, one posterior)")
        return self

    @model_validator(mode="after")
    def _quantize_frozen_text_only(self) -> ModelConfig:
        """int8 weights have no gradients and dynamic quantization only covers Linear layers: fine-tuning a
        quantized encoder cannot work, and an image CNN would stay fp32 under a name that says int8. Refuse both
        at load time instead of training or caching something other than what the config names."""
        if self.encoder.quantize == "none":
            return self
        if self.kind != "text":
            raise ValueError(f"encoder.quantize: {self.encoder.quantize!r} is for text encoders only (kind: text)")
        if self.training.mode == "full":
            raise ValueError(
                f"encoder.quantize: {self.encoder.quantize!r} cannot be combined with training.mode: full "
                "(a quantized encoder cannot be fine-tuned); use quantize: none to fine-tune"
            )
        return self

    @model_validator(mode="after")
    def _onnx_frozen_deterministic_text_only(self) -> ModelConfig:
        """The ONNX graph is the text encoder exported in eval mode: it has no gradients (no fine-tuning) and no
        dropout (full-network MC dropout would return T equal passes). Refuse those combinations at load time
        instead of silently running something other than what the config names."""
        if self.encoder.runtime == "torch":
            return self
        requirements = {
            "kind: text": self.kind == "text",
            "training.mode: head": self.training.mode == "head",
            "acquisition.mc_mode: head or laplace": self.acquisition.mc_mode != "full",
        }
        missing = [need for need, ok in requirements.items() if not ok]
        if missing:
            raise ValueError(
                f"encoder.runtime: {self.encoder.runtime!r} needs {', '.join(missing)}: the exported graph is the "
                "frozen text encoder, without gradients or dropout; use runtime: torch for the rest"
            )
        return self


#: a model config is chosen by name (LS users type it into the model's extra params): never a path
CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


class UnknownModelConfig(LookupError):
    """No model config of that name in the configs folder; the message lists the names there (never the folder)."""


def available_configs(configs_dir: Path) -> list[str]:
    return sorted(p.stem for p in Path(configs_dir).glob("*.yaml"))


def load_model_config(configs_dir: Path, name: str) -> ModelConfig:
    """Read ``<configs_dir>/<name>.yaml`` into a validated :class:`ModelConfig`.

    ``name`` is a name, not a path: it may come from any LS user, so a name that could leave the folder
    (slashes, ``..``, an absolute path) is refused like an unknown one.
    """
    if not isinstance(name, str) or len(name) > 100 or not CONFIG_NAME.match(name):
        raise UnknownModelConfig(
            f"model config names are letters, digits, '-', '_' and '.' (no paths); available: "
            f"{available_configs(configs_dir)}"
        )
    path = Path(configs_dir) / f"{name}.yaml"
    if not path.is_file():
        raise UnknownModelConfig(f"model config {name!r} not found; available: {available_configs(configs_dir)}")
    return ModelConfig.model_validate(yaml.safe_load(path.read_text()))
