"""Studies: conditions × seeds trained by one resumable runner, measured, and tested against claims.

    from inception_jax import study
    s = study.Study(name, question, conditions=(study.Condition('a', config_a), ...), seeds=(0, 1, 2),
                    claims=(study.Claim('a_beats_b', 'paper §4', '...', study.M('a', 'test_top1')
                                        - study.M('b', 'test_top1'), unit='points'),))
    study.run(s, workdir)            # trains what is not finished
    study.write(s, workdir)          # study.json, report.md, plots

`runner` trains, `measures` reads a run's files, `claims` turns per-seed numbers into verdicts, `report`
writes the record and the report.
"""

from inception_jax.study.claims import EFFECT, NO_EFFECT, REFUTED, REPRODUCED, UNDECIDED, Claim, M, Verdict
from inception_jax.study.runner import Condition, Study, parse_seeds, read_result, run, run_dir
from inception_jax.study.report import summarize, table, write

__all__ = ['Claim', 'Condition', 'EFFECT', 'M', 'NO_EFFECT', 'REFUTED', 'REPRODUCED', 'Study', 'UNDECIDED',
           'Verdict', 'parse_seeds', 'read_result', 'run', 'run_dir', 'summarize', 'table', 'write']
