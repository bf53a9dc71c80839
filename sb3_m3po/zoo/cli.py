"""``sb3-m3po`` console script: ``sb3-m3po train|enjoy|plot-train|plot-results ...``."""

import sys


def main() -> None:
    commands = ("train", "enjoy", "plot-train", "plot-results")
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(f"usage: sb3-m3po {{{','.join(commands)}}} [rl-zoo3 flags]", file=sys.stderr)
        sys.exit(2)
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "train":
        from sb3_m3po.zoo.train import main as train

        train(rest)
    elif command == "enjoy":
        from sb3_m3po.zoo.enjoy import main as enjoy

        enjoy(rest)
    else:
        from sb3_m3po.zoo import register

        register()
        sys.argv = [f"sb3-m3po {command}", *rest]
        if command == "plot-train":
            from rl_zoo3.plots.plot_train import plot_train

            plot_train()
        else:
            from rl_zoo3.plots.all_plots import all_plots

            all_plots()


if __name__ == "__main__":
    main()
