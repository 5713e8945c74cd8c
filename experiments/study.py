"""Runs a study: every condition × seed (resumable), then `DIR/study.json`, `DIR/report.md` and plots.

    python -m experiments.study --study=aux_classifiers --workdir=DIR
    python -m experiments.study --study=aux_classifiers --workdir=DIR --scale=smoke
    python -m experiments.study --study=aux_classifiers --workdir=DIR --report_only   # from what has finished
    python -m experiments.study --study=aux_classifiers --workdir=DIR --report_only --publish=docs/studies

The studies are in experiments/studies/ (one file each: conditions, seeds, budgets, claims and their
criteria). Run `DIR/<condition>/seed_<s>/` is a training run's workdir; the command resumes: finished runs
are read back, an interrupted one continues from its checkpoint. The report prints at the end.
"""

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import os

from absl import flags

from experiments import cli, studies

_STUDY = flags.DEFINE_enum('study', None, list(studies.NAMES), 'which study to run')
_WORKDIR = flags.DEFINE_string('workdir', None, 'the study\'s directory: a run per condition and seed, the '
                               'record and the report')
_SCALE = flags.DEFINE_string('scale', 'full', "the study's budget: 'full', or 'smoke' for a run of minutes")
_SEEDS = flags.DEFINE_string('seeds', None, "the seeds (a count or a list; default: the study's)")
_CONDITIONS = flags.DEFINE_list('conditions', None, "conditions to run (default: all); the claims that "
                                'compare other ones are left out')
_DATA_DIR = flags.DEFINE_string('data_dir', '', "the dataset's files (default: where it is installed)")
_PUBLISH = flags.DEFINE_string('publish', None, 'also copy the record (without the per-block gradient arrays) '
                               'and the plots into this directory, for a docs page (e.g. docs/studies)')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'train nothing: the record and report of the runs '
                                 'that have finished')


def main(argv):
  del argv
  if not _STUDY.value or not _WORKDIR.value:
    cli.fail(f'--study and --workdir are required; the studies: {", ".join(studies.NAMES)}')
  from inception_jax import study as study_lib
  try:
    if _SCALE.value not in studies.scales(_STUDY.value):
      raise ValueError(f'--scale={_SCALE.value} is not a scale of {_STUDY.value}; valid: '
                       f'{", ".join(studies.scales(_STUDY.value))}')
    seeds = study_lib.parse_seeds(_SEEDS.value) if _SEEDS.value else None
    study = studies.get_study(_STUDY.value, _SCALE.value, _DATA_DIR.value).select(_CONDITIONS.value, seeds)
  except ValueError as e:
    cli.fail(e)
  cli.enable_compilation_cache()
  if not _REPORT_ONLY.value:
    with cli.training_errors():  # TensorFlow loads with training: after the checks above
      study_lib.run(study, _WORKDIR.value)
  record = study_lib.write(study, _WORKDIR.value, machine=cli.machine_speed())
  if _PUBLISH.value:
    for path in study_lib.report.publish(record, _WORKDIR.value, _PUBLISH.value):
      print(f'wrote {path}', flush=True)
  with open(os.path.join(_WORKDIR.value, study_lib.report.REPORT_FILE)) as f:
    print(f.read(), flush=True)


if __name__ == '__main__':
  cli.run(main)
