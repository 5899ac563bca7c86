"""Draw a training run's loss curve (loss.tsv from train_demo.py) as a small PNG. Needs matplotlib.

python training/plot_loss.py training/demo_loss.tsv docs/img/demo_loss.png
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> int:
    steps, train, held_steps, held = [], [], [], []
    with open(src) as f:
        for line in f.read().splitlines()[1:]:
            step, _, loss, heldout, _ = line.split("\t")
            steps.append(int(step) + 1)
            train.append(float(loss))
            if heldout:
                held_steps.append(int(step) + 1)
                held.append(float(heldout))
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, train, lw=0.6, color="tab:blue", alpha=0.7, label="train (one batch)")
    ax.plot(held_steps, held, "o-", color="tab:orange", ms=3, label="held-out")
    ax.set_xlabel("step (2048 tokens each)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_ylim(3, 11)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=80)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
