"""Pipeline stages and their orchestration.

Each stage is written once, as a function ``run(params) -> summary`` in its own module, and
registered in :mod:`pipelines.registry`. ``dvc.yaml`` calls them through
``python -m pipelines <stage>``; the Prefect flow (:mod:`pipelines.flow`) runs the same
stages through DVC, so DVC's lock and cache stay consistent whichever way a run starts.
"""
