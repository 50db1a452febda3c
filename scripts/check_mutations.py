"""Apply deliberate bugs to the update one at a time and check that the tests catch each.

Each mutation is a plausible mistake that leaves every loss value unchanged on the first update
(the ``dyn`` and ``rep`` KL terms are equal in value; the slow critic starts as a copy of the
critic; an EMA checked at learning rate 0 never moves), so only the gradient, dependency and EMA
tests of ``tests/test_update_terms.py`` can catch it. The working tree is restored after each.

    python scripts/check_mutations.py                    # tests/test_update_terms.py
    python scripts/check_mutations.py tests/test_update.py tests/test_update_terms.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPDATE = ROOT / "physlink_gym/agents/dreamerv3/update.py"
CONFIG = ROOT / "physlink_gym/agents/dreamerv3/config.py"

#: name: (file, text, replacement)
MUTATIONS = {
    "dyn and rep KL scales swapped": (
        CONFIG, '"dyn": self.scale_dyn, "rep": self.scale_rep,',
        '"dyn": self.scale_rep, "rep": self.scale_dyn,'),
    "slow-critic regulariser aimed at the online critic": (
        UPDATE, "value_logits, ret, slow[: ret.shape[0]], m.bins",
        "value_logits, ret, value[: ret.shape[0]], m.bins"),
    "slow-critic EMA rate ten times too large": (
        UPDATE, "rate = cfg.slow_critic_rate * every", "rate = 10 * cfg.slow_critic_rate * every"),
    "replay-value scale 0.3 set to 1.0": (
        CONFIG, "scale_repval: float = 0.3", "scale_repval: float = 1.0"),
    "reward head's gradient cut from the world-model features": (
        UPDATE, "rew_feat = feat if cfg.reward_grad else feat.detach()",
        "rew_feat = feat.detach()"),
    "replay-value regulariser reads the online critic": (
        UPDATE, "slow = _decode(m, m.slow_critic(feat.detach()))",
        "slow = _decode(m, m.critic(feat.detach()))"),
}


def main() -> None:
    tests = sys.argv[1:] or ["tests/test_update_terms.py"]
    missed = []
    for name, (path, old, new) in MUTATIONS.items():
        source = path.read_text()
        if source.count(old) != 1:
            raise SystemExit(f"{name}: the text to mutate is not in {path.name} once; update "
                             "this script with the code")
        path.write_text(source.replace(old, new))
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x",
                                   "-p", "no:cacheprovider", *tests], cwd=ROOT,
                                  capture_output=True, text=True)
        finally:
            path.write_text(source)
        caught = done.returncode != 0
        missed += [] if caught else [name]
        print(f"{'caught' if caught else 'MISSED':6s}  {name}", flush=True)
    print(f"{len(MUTATIONS) - len(missed)} of {len(MUTATIONS)} caught")
    raise SystemExit(1 if missed else 0)


if __name__ == "__main__":
    main()
