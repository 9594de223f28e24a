"""`run_libero_eval.py --dry_run True`: check everything an evaluation needs, cheaply, and describe it.

    plan_evaluation(cfg) -> Plan      (the CLI prints `plan.lines()` and exits 0; no simulator starts)

Checked, as `run_evaluation` would, without loading weights or starting a simulator: the suite, task ids and
trial count against LIBERO's task definitions; --pretrained_checkpoint (a directory or a hub id: resolved,
offline and not cached fails naming the repo), its files, manifest and head variant, every tensor's name and
shape against the model built on the meta device (read from the file headers only), the flags against its
config and dataset statistics; and the run directory (a resumed run must agree on the protocol flags).
"""

from __future__ import annotations

import logging

from prismatic.eval.config import EvalConfig
from prismatic.plan import Plan

logger = logging.getLogger(__name__)


def plan_evaluation(cfg: EvalConfig) -> Plan:
    from prismatic.eval.policies import check_checkpoint_flags, resolve_checkpoint, resolve_device
    from prismatic.eval.results import RESULTS_FILE, read_results
    from prismatic.eval.runner import check_resume, select_episodes

    plan = Plan(what="simulated")
    task_names, episodes = select_episodes(cfg)
    num_episodes = sum(len(e) for e in episodes.values())
    plan.add("protocol", [
        ("suite", cfg.task_suite_name),
        ("tasks", f"{len(task_names)}: " + ", ".join(str(t) for t in task_names)),
        ("episodes", f"{num_episodes} ({cfg.num_trials_per_task} per task, initial states 0..{cfg.num_trials_per_task - 1})"),
        ("steps per episode", f"{cfg.num_steps_wait} wait + at most {cfg.suite_max_steps} policy steps"),
        ("seed", cfg.seed),
    ])

    if cfg.policy == "vla":
        from prismatic.models.loading import check_vla_checkpoint
        from prismatic.vla.normalization import load_dataset_statistics

        ckpt = resolve_checkpoint(cfg)
        if not ckpt.is_dir():
            raise FileNotFoundError(f"--pretrained_checkpoint is not a directory: {ckpt}")
        checked = check_vla_checkpoint(ckpt, use_pro_version=cfg.use_pro_version, lazy=True)
        config = checked.config
        key = check_checkpoint_flags(cfg, config, load_dataset_statistics(ckpt), ckpt)
        device, dtype = resolve_device(cfg.device)
        total = sum(p.numel() for p in checked.model.parameters())
        source = cfg.pretrained_checkpoint + ("" if str(ckpt) == cfg.pretrained_checkpoint else f" -> {ckpt}")
        plan.add("policy", [
            ("checkpoint", source),
            ("model", f"{config.preset}, {'Pro' if config.action_head.use_pro_version else 'original'} head, "
                      f"{config.num_images_in_input} images, proprio {config.use_proprio}"),
            ("parameters", f"{total:,} (checked on the meta device; loaded in {dtype} on {device})"),
            ("actions", f"chunks of {config.num_actions_chunk}, {cfg.num_open_loop_steps} executed per query, "
                        f"un-normalised with {key!r}"),
            ("center crop", cfg.center_crop),
        ])
        plan.numbers.update(total_parameters=total, unnorm_key=key, checkpoint_dir=str(ckpt))
    else:
        plan.add("policy", [("policy", f"{cfg.policy} (runs in the simulator workers)")])

    run_dir = cfg.run_dir
    check_resume(run_dir, cfg)
    done = read_results(run_dir / RESULTS_FILE)
    finished = sum(1 for (t, e), r in done.items() if r.error is None and e in episodes.get(t, ()))
    plan.add("output", [
        ("run dir", run_dir),
        ("resume", f"{finished} of {num_episodes} episodes already done" if done else "new run"),
        ("simulators", f"{cfg.num_envs} worker process(es)"),
        ("videos", cfg.save_videos),
        ("wandb", f"project {cfg.wandb_project}" if cfg.use_wandb else "off"),
    ])
    plan.numbers.update(num_episodes=num_episodes, episodes_done=finished, run_dir=str(run_dir))
    return plan
