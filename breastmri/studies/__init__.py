"""Studies, each run as a module: python -m breastmri.studies.ablation | learning_curve | thesis."""
import sys

if sys.argv[:1] == ["-m"]:  # being located by `python -m`: keep TensorFlow's start-up lines off the terminal
    from breastmri.runtime import quiet_start

    quiet_start()
