"""``posttrain eval`` and ``posttrain generate``: use a trained (or base) model outside a training run.

A *target* is one of

* a **run directory** (it holds ``recipe.resolved.yaml``): its ``model/`` with the recipe it was trained with;
* a **model directory** (``config.json``): that model, with ``--recipe`` or, when it is a run's ``model/``, the
  run's recipe;
* a **recipe** (a file or a shipped name): the recipe's base model (``model.name``), i.e. the "before" numbers.

Evaluation is the one a run does (:func:`posttrain.evaluation.evaluate`: greedy replies to the recipe's
``data.eval`` prompts, scored by ``eval.reward`` or the first reward). For DPO recipes it adds the held-out
preference-pair metrics TRL's ``DPOTrainer`` logs in training (``rewards/accuracies``, ``rewards/margins``), here
on pairs the model was not trained on: the implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` (Rafailov et
al. 2023, Eq. 5) of the chosen and rejected replies, with the recipe's base model as the reference ``pi_ref``; the
pair accuracy is the fraction with a larger reward for the chosen reply. Log-probs are sums over the reply's tokens
(prompt and reply rendered with the chat template as TRL does, no truncation).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from posttrain.errors import UserError

DEFAULT_TEMPERATURE = 0.7  # SmolLM2-135M: temperature 1.0 / top_k 0 is gibberish (environment.md)
DEFAULT_TOP_P = 0.9


@dataclass
class Target:
    model: str                      # what load_model_and_tokenizer opens (a path or a recipe model name)
    recipe: Any = None              # posttrain.recipes.Recipe or None
    recipe_path: Optional[str] = None
    kind: str = "model"             # run | model | recipe

    def describe(self) -> str:
        where = f", recipe {self.recipe_path}" if self.recipe_path else ""
        return f"{self.kind} -> model {self.model}{where}"


def _load_recipe(path: str, overrides=()):
    from posttrain.recipes import RecipeError, load_recipe

    try:
        return load_recipe(path, list(overrides))
    except RecipeError as exc:
        raise UserError(str(exc)) from None


def resolve_target(target: str, recipe: Optional[str] = None, overrides=()) -> Target:
    """Map the command line's TARGET (and ``--recipe``) to a model and a recipe (see the module docstring)."""
    from posttrain.cli import _resolve_recipe_path, add_user_import_paths

    recipe_path = _resolve_recipe_path(recipe) if recipe is not None else None
    add_user_import_paths(recipe_path)  # the cwd always (a run's recipe may name 'my_rewards:fn'), + --recipe's dir
    p = Path(target).expanduser()
    if p.is_dir() and (p / "recipe.resolved.yaml").is_file():
        model_dir = p / "model"
        if not (model_dir / "config.json").is_file():
            raise UserError(f"{target}: run directory has no saved model in '{model_dir}' "
                            f"(the run had output.save_model=false or did not finish)")
        recipe_path = recipe_path or str(p / "recipe.resolved.yaml")
        return Target(str(model_dir), _load_recipe(recipe_path, overrides), recipe_path, "run")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{target}: neither a run directory (no recipe.resolved.yaml) nor a model directory "
                            f"(no config.json)")
        if recipe_path is None and (p.parent / "recipe.resolved.yaml").is_file():
            recipe_path = str(p.parent / "recipe.resolved.yaml")
        r = _load_recipe(recipe_path, overrides) if recipe_path else None
        return Target(str(p), r, recipe_path, "model")
    if recipe is not None:
        raise UserError(f"{target}: not a run or model directory (with --recipe, TARGET must be a directory)")
    path = _resolve_recipe_path(target)
    if not os.path.isfile(path):
        raise UserError(f"{target}: not a run directory, a model directory, a recipe file or a shipped recipe name "
                        f"(see `posttrain recipes`)")
    add_user_import_paths(path)
    r = _load_recipe(path, overrides)
    return Target(r.model.name, r, path, "recipe")


def _load(name: str, recipe=None):
    import torch

    from posttrain.models import ModelLoadError, load_model_and_tokenizer

    kw = {}
    if recipe is not None:
        kw = dict(dtype=getattr(torch, recipe.model.dtype), cache_dir=recipe.model.cache_dir,
                  trust_remote_code=recipe.model.trust_remote_code)
    try:
        model, tok = load_model_and_tokenizer(name, **kw)
    except ModelLoadError as exc:
        raise UserError(f"model: {exc}") from None
    model.eval()
    return model, tok


def _set_threads(threads: Optional[int], recipe=None) -> None:
    import torch

    n = threads or (recipe.model.threads if recipe is not None else None)
    if n:
        torch.set_num_threads(n)


def _dataset(spec_name: str, args: Dict[str, Any], where: str):
    from posttrain.data import DATASETS
    from posttrain.registry import RegistryError

    try:
        return DATASETS.get(spec_name)(**args)
    except (RegistryError, TypeError, ValueError, OSError) as exc:
        raise UserError(f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _file_dataset(path: str):
    return _dataset("file", {"path": path}, f"--data {path}")


def _limit(ds, n: Optional[int]):
    return ds.select(range(min(n, len(ds)))) if n is not None else ds


def _scorer(recipe, tokenizer):
    from posttrain.registry import RegistryError
    from posttrain.rewards import build_reward

    spec = recipe.eval.reward or (recipe.rewards[0] if recipe.rewards else None)
    if spec is None:
        return None, None
    where = "eval.reward" if recipe.eval.reward else "rewards.0"
    try:
        return build_reward(spec.name, spec.args, tokenizer=tokenizer), spec.name
    except (RegistryError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from None


# ----------------------------------------------------------------------------------------------- pair metrics
def _messages(x) -> bool:
    return isinstance(x, list) and bool(x) and isinstance(x[0], dict)


def _pair_tokens(tokenizer, prompt, completion) -> tuple[list[int], list[int]]:
    """Token ids of the rendered prompt and of the reply after it (the reply's chat-template tail included)."""
    from posttrain.data import render_prompt

    prompt_text = render_prompt(prompt, tokenizer)
    if _messages(prompt) and _messages(completion):
        full = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
        reply = full[len(prompt_text):] if full.startswith(prompt_text) else completion[-1]["content"]
    else:
        reply = (completion[-1]["content"] if _messages(completion) else str(completion)) + (tokenizer.eos_token or "")
    return (tokenizer(prompt_text, add_special_tokens=False)["input_ids"],
            tokenizer(reply, add_special_tokens=False)["input_ids"])


def sequence_logps(model, tokenizer, prompts, completions, *, batch_size: int = 8) -> List[float]:
    """Sum of ``log p(reply token | prefix)`` over each reply's tokens (prompt tokens excluded)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: List[float] = []
    items = [_pair_tokens(tokenizer, p, c) for p, c in zip(prompts, completions)]
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            seqs = [p + c for p, c in batch]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            attn = torch.zeros((len(seqs), width), dtype=torch.long)
            target = torch.zeros((len(seqs), width), dtype=torch.bool)
            for i, ((p, c), s) in enumerate(zip(batch, seqs)):
                ids[i, :len(s)] = torch.tensor(s)
                attn[i, :len(s)] = 1
                target[i, len(p):len(s)] = True
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
            mask = target[:, 1:].to(device)
            out.extend((logps * mask).sum(dim=1).tolist())
    return out


def pair_metrics(policy, reference, tokenizer, pairs, *, beta: float, batch_size: int = 8,
                 ref_tokenizer=None) -> Dict[str, Any]:
    """Held-out DPO metrics of ``policy`` against ``reference`` on ``pairs`` (columns prompt, chosen, rejected).

    ``margin_i = beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)))``; ``accuracy`` is the
    fraction of pairs with ``margin_i > 0`` (ties count as wrong, as TRL's ``rewards/accuracies``).
    """
    prompts, chosen, rejected = list(pairs["prompt"]), list(pairs["chosen"]), list(pairs["rejected"])
    ref_tok = ref_tokenizer or tokenizer
    pc = sequence_logps(policy, tokenizer, prompts, chosen, batch_size=batch_size)
    pr = sequence_logps(policy, tokenizer, prompts, rejected, batch_size=batch_size)
    rc = sequence_logps(reference, ref_tok, prompts, chosen, batch_size=batch_size)
    rr = sequence_logps(reference, ref_tok, prompts, rejected, batch_size=batch_size)
    chosen_r = [beta * (a - b) for a, b in zip(pc, rc)]
    rejected_r = [beta * (a - b) for a, b in zip(pr, rr)]
    margins = [c - r for c, r in zip(chosen_r, rejected_r)]
    n = len(margins)
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return {
        "n": n,
        "accuracy": sum(m > 0 for m in margins) / n if n else None,
        "mean_margin": mean(margins),
        "mean_chosen_reward": mean(chosen_r),
        "mean_rejected_reward": mean(rejected_r),
        # without the reference: does the policy itself give the chosen reply the higher likelihood?
        "policy_logp_accuracy": sum(a > b for a, b in zip(pc, pr)) / n if n else None,
        "beta": beta,
    }


def _heldout_pairs(recipe, n: Optional[int]):
    """The recipe's training pair set with ``split: heldout`` (the preferences builder's held-out prompts)."""
    import inspect

    from posttrain.data import DATASETS

    spec = recipe.data.train
    try:
        builder = DATASETS.get(spec.name)
        takes_split = "split" in inspect.signature(builder).parameters
    except Exception:  # noqa: BLE001 - reported below as "pass --data"
        takes_split = False
    if not takes_split:
        raise UserError(f"data.train: dataset '{spec.name}' has no held-out split; pass held-out pairs with "
                        f"--data FILE (columns prompt, chosen, rejected)")
    params = inspect.signature(builder).parameters
    # The recipe's n counts training pairs; the held-out split has its own size, so n is applied after building.
    args = {k: v for k, v in spec.args.items() if k != "n"}
    args["split"] = "heldout"
    if n is not None and "n_prompts" in params:  # generated pairs: generate no more prompts than needed
        args["n_prompts"] = min(int(args.get("n_prompts", params["n_prompts"].default)), 2 * n)
    return _limit(_dataset(spec.name, args, "data.train (split: heldout)"), n), f"{spec.name} split=heldout"


def _is_pairs(ds) -> bool:
    return {"prompt", "chosen", "rejected"} <= set(ds.column_names or ())


def run_eval(target: Target, *, data: Optional[str] = None, n: Optional[int] = None, batch_size: Optional[int] = None,
             max_new_tokens: Optional[int] = None, threads: Optional[int] = None, pairs: Optional[bool] = None,
             n_examples: int = 3) -> Dict[str, Any]:
    """Evaluate ``target``; returns ``{"target", "model", "recipe", "prompts": {...} | absent, "pairs": {...} |
    absent}``. ``pairs`` None: pair metrics for DPO recipes (or a ``--data`` file with chosen/rejected columns)."""
    from posttrain.evaluation import evaluate

    recipe = target.recipe
    if recipe is None:
        raise UserError(f"{target.model}: a model directory needs --recipe RECIPE (for its eval set, scoring reward "
                        f"and chat rendering)")
    _set_threads(threads, recipe)
    from transformers import set_seed

    set_seed(recipe.seed)
    result: Dict[str, Any] = {"target": target.kind, "model": target.model, "recipe": target.recipe_path}
    file_ds = _file_dataset(data) if data else None
    want_pairs = pairs if pairs is not None else (
        (file_ds is not None and _is_pairs(file_ds))
        or (file_ds is None and recipe.algorithm in ("dpo", "reward_model+dpo")))
    model, tok = _load(target.model, recipe)
    bs = batch_size or recipe.eval.batch_size

    prompt_ds, source = None, None
    if file_ds is not None and not _is_pairs(file_ds):
        prompt_ds, source = file_ds, data
    elif file_ds is None and recipe.data.eval is not None:
        from posttrain.pipelines.checks import build_eval_dataset

        prompt_ds, source = build_eval_dataset(recipe.data.eval), "data.eval"
    if prompt_ds is not None:
        scorer, scorer_name = _scorer(recipe, tok)
        if scorer is None:
            raise UserError("eval.reward: scoring needs a reward (eval.reward or rewards.0) in the recipe")
        prompt_ds = _limit(prompt_ds, n)
        ev = evaluate(model, tok, prompt_ds, scorer, max_new_tokens=max_new_tokens or recipe.eval.max_new_tokens,
                      batch_size=bs, success_threshold=recipe.eval.success_threshold, desc="eval",
                      n_examples=n_examples, em_inf=recipe.eval.em_inf)
        result["prompts"] = dict(source=source, reward=scorer_name, **ev)

    if want_pairs:
        if file_ds is not None and _is_pairs(file_ds):
            pair_ds, pair_source = _limit(file_ds, n), data
        elif file_ds is not None:
            raise UserError(f"--data {data}: pair metrics need columns prompt, chosen, rejected; "
                            f"present: {', '.join(file_ds.column_names)}")
        else:
            pair_ds, pair_source = _heldout_pairs(recipe, n)
        if target.kind == "recipe":
            ref, ref_tok = model, tok  # the base model is its own reference: every margin is 0 by definition
        else:
            ref, ref_tok = _load(recipe.model.name, recipe)
        beta = float(recipe.train.get("beta", 0.1))
        pm = pair_metrics(model, ref, tok, pair_ds, beta=beta, batch_size=bs, ref_tokenizer=ref_tok)
        result["pairs"] = dict(source=pair_source, reference=recipe.model.name, **pm)
        if target.kind == "recipe":
            result["pairs"]["note"] = "the target is the reference model: margins are 0 by definition"
    if "prompts" not in result and "pairs" not in result:
        raise UserError(f"{target.recipe_path}: nothing to evaluate: the recipe has no data.eval; pass --data FILE")
    return result


def format_eval(res: Dict[str, Any]) -> str:
    def f(v, nd=3):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (
            f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    lines = [f"model   {res['model']}", f"recipe  {res['recipe']}"]
    if "prompts" in res:
        p = res["prompts"]
        lines += ["", f"held-out prompts ({p['source']}, {p.get('decoding', 'greedy')}, scored by {p['reward']})",
                  f"  n {p['n']}   accuracy {f(p['accuracy'])}   mean score {f(p['mean_score'])}   "
                  f"truncated {f(p['truncated_fraction'])}   {p['seconds']:.1f} s"]
        for d, m in (p.get("by_domain") or {}).items():
            lines.append(f"  {d}: n {m['n']}   accuracy {f(m['accuracy'])}   mean score {f(m['mean_score'])}   "
                         f"truncated {f(m['truncated_fraction'])}")
        for ex in p["examples"]:
            lines.append(f"  [{f(ex['score'], 2)}] {_one_line(ex['prompt'], 90)} -> {_one_line(ex['completion'], 50)}")
    if "pairs" in res:
        q = res["pairs"]
        lines += ["", f"preference pairs ({q['source']}; reference {q['reference']}, beta {q['beta']})",
                  f"  n {q['n']}   pair accuracy {f(q['accuracy'])}   mean margin {f(q['mean_margin'], 4)}   "
                  f"chosen {f(q['mean_chosen_reward'], 4)}   rejected {f(q['mean_rejected_reward'], 4)}   "
                  f"policy log-p accuracy {f(q['policy_logp_accuracy'])}"]
        if q.get("note"):
            lines.append(f"  ({q['note']})")
    return "\n".join(lines)


def _one_line(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ----------------------------------------------------------------------------------------------- generation
def _text_prompts(texts: List[str], *, system: Optional[str], prefill: Optional[str], plain: bool) -> List[Any]:
    from posttrain.data.common import chat_prompt

    return list(texts) if plain else [chat_prompt(t, system=system, prefill=prefill) for t in texts]


def read_prompt_file(path: str) -> List[Any]:
    """``.txt``: one prompt per non-empty line; anything else: the ``file`` dataset builder's ``prompt`` column
    (strings or message lists, pre-fills included)."""
    p = Path(path).expanduser()
    if p.suffix == ".txt":
        if not p.is_file():
            raise UserError(f"--file: '{p}' does not exist")
        lines = [line.strip() for line in p.read_text().splitlines() if line.strip()]
        if not lines:
            raise UserError(f"--file: '{p}' has no prompts")
        return lines
    return list(_file_dataset(path)["prompt"])


def em_inf_settings(value: Optional[str], recipe=None):
    """``generate --em-inf``: ``None`` (off), ``recipe`` (the recipe's ``eval.em_inf``), ``default`` (the section's
    defaults) or a YAML mapping of ``eval.em_inf`` keys; a bad key or value is one line naming it."""
    import yaml
    from pydantic import ValidationError

    from posttrain.recipes.schema import EmInfSection
    from posttrain.weighting.protocol import format_validation_error

    if value is None:
        return None
    if value == "recipe":
        if recipe is None or recipe.eval.em_inf is None:
            raise UserError("--em-inf recipe: the recipe has no eval.em_inf section (give 'default' or a mapping)")
        return recipe.eval.em_inf
    if value == "default":
        return EmInfSection()
    try:
        data = yaml.safe_load(value)
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict):
        raise UserError(f"--em-inf: expected 'recipe', 'default' or a mapping such as '{{mode: logits}}', got {value!r}")
    try:
        return EmInfSection(**data)
    except ValidationError as exc:
        raise UserError(f"--em-inf.{format_validation_error(exc)}") from None


def generate_replies(target: Target, prompts: List[Any], *, samples: int = 1, greedy: bool = False,
                     temperature: Optional[float] = None, top_p: Optional[float] = None,
                     max_new_tokens: Optional[int] = None, batch_size: int = 8, threads: Optional[int] = None,
                     seed: Optional[int] = None, em_inf: Any = None) -> List[Dict[str, Any]]:
    """``[{"prompt", "rendered", "replies": [...]}]``: ``samples`` replies per prompt (greedy: one), rendered with
    :func:`posttrain.data.render_prompt` (chat template; a final assistant message is a pre-fill continued).
    ``em_inf`` (an ``eval.em_inf`` section): EM-INF decoding (:mod:`posttrain.em_inf`): the logit adjustment, then
    ``temperature`` (default: the section's) sampling, or the argmax with ``greedy``."""
    import torch
    from transformers import set_seed

    from posttrain.data import render_prompt

    recipe = target.recipe
    _set_threads(threads, recipe)
    set_seed(seed if seed is not None else (recipe.seed if recipe is not None else 0))
    model, tok = _load(target.model, recipe)
    train = recipe.train if recipe is not None else {}
    explicit_temperature = temperature is not None
    temperature = temperature if temperature is not None else float(train.get("temperature", DEFAULT_TEMPERATURE))
    top_p = top_p if top_p is not None else float(train.get("top_p", DEFAULT_TOP_P))
    if max_new_tokens is None:
        max_new_tokens = int(train.get("max_completion_length", 64)) if recipe is not None else 64
    if greedy:
        samples = 1
    if em_inf is not None:
        from posttrain.em_inf import em_inf_generate_kwargs

        # the decoding temperature after the adjustment: greedy -> 0 (argmax), else --temperature or the section's
        t = 0.0 if greedy else (temperature if explicit_temperature else em_inf.temperature)
        em_inf_decoding = em_inf.model_copy(update={"temperature": float(t)})
        if t == 0:
            samples = 1
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rendered = [render_prompt(p, tok) for p in prompts]
    out = []
    with torch.no_grad():
        for start in range(0, len(rendered), batch_size):
            texts = rendered[start:start + batch_size]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None) if greedy else dict(
                do_sample=True, temperature=temperature, top_p=top_p, top_k=0, num_return_sequences=samples)
            if em_inf is not None:
                kw = dict(em_inf_generate_kwargs(em_inf_decoding), num_return_sequences=samples)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                                 **kw)
            gen = gen[:, enc["input_ids"].shape[1]:]
            for i, text in enumerate(texts):
                rows = gen[i * samples:(i + 1) * samples]
                out.append({"prompt": prompts[start + i], "rendered": text,
                            "replies": [tok.decode(r, skip_special_tokens=True) for r in rows]})
    return out


def format_generations(rows: List[Dict[str, Any]]) -> str:
    lines = []
    for i, row in enumerate(rows):
        shown = row["prompt"] if isinstance(row["prompt"], str) else " | ".join(
            f"{m['role']}: {m['content']}" for m in row["prompt"])
        lines.append(f"[{i}] {shown}")
        for j, reply in enumerate(row["replies"]):
            tag = "  -> " if len(row["replies"]) == 1 else f"  {j}> "
            lines.append(tag + reply.replace("\n", "\n     "))
    return "\n".join(lines)


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, default=str, ensure_ascii=False)
