"""The run plot says where SFT stopped and where RL started: a policy that rolls back (SFT to 340, RL from the
checkpoint at 260) shows both, and the RL axis says that RL step k is drawn at the switch step + k."""

from plasticity.plots import run_figure


def _run(decided: int, from_step: int, reason: str):
    rows = [
        {"phase": "sft", "step": s, "val_loss": 1.0 + abs(s - 260) / 400} for s in range(0, decided + 1, 20)
    ]
    rows += [
        {"phase": "rl", "step": from_step + k, "rl_step": k, "reward_mean": 0.3 + 0.01 * k}
        for k in range(1, 9)
    ]
    rows += [{"phase": "rl", "step": from_step + k, "accuracy": 0.6 + 0.01 * k} for k in (0, 4, 8)]
    summary = {
        "run_name": "tiny-test",
        "switch": {"step": from_step, "decided_at_step": decided, "regime": "stable"},
        "sft_last_step": decided,
        "sft_stop_reason": reason,
        "accuracy": {"at_switch": 0.6, "final": 0.68},
    }
    return run_figure(rows, summary)


def _texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in (legend.get_texts() if legend else [])] + [t.get_text() for t in ax.texts]


def test_a_rollback_shows_where_sft_stopped_and_where_rl_starts():
    fig = _run(340, 260, "switch.policy min_loss decided at step 340: no new minimum for 4 validations")
    ax_sft, ax_rl = fig.axes[0], fig.axes[1]
    assert "RL starts from checkpoint 260 (stable)" in _texts(ax_sft)
    assert "SFT stopped @ 340 (the switch policy decided)" in _texts(ax_sft)
    assert ax_rl.get_xlabel() == "step (global: RL step k is drawn at 260 + k)"
    assert any("SFT ran on to step 340" in t for t in _texts(ax_rl))
    assert any("RL starts from SFT checkpoint 260" in t for t in [*_texts(ax_rl), *_texts(fig.axes[2])])


def test_no_rollback_draws_one_line_and_names_the_budget():
    fig = _run(600, 600, "SFT budget sft.max_steps=600 reached")
    texts = _texts(fig.axes[0])
    assert "RL starts from checkpoint 600 (stable)" in texts
    assert not any(t.startswith("SFT stopped") for t in texts)  # the same step: one line
    assert not any("SFT ran on" in t for t in _texts(fig.axes[1]))
