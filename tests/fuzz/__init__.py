"""Hostile-input fuzzing of unet_rt.

Each *campaign* (:mod:`tests.fuzz.worker`) throws generated hostile input at
one part of the API (arrays, arguments, planning, ``out=`` arrays, corrupt
model files, lying metadata, misbehaving networks with and without
metadata, odd model paths, the ``unet-rt`` command line, the exporter) and
checks every outcome against the contract in :mod:`tests.fuzz.contract`.
``tests/test_fuzz.py`` runs each campaign in a subprocess with a timeout, so a
crash or a hang fails the test instead of the test run.

Modules:

* :mod:`tests.fuzz.contract`: what an acceptable outcome is.
* :mod:`tests.fuzz.recorder`: logs, times and classifies every call.
* :mod:`tests.fuzz.arrays`: array recipes and their hypothesis strategies.
* :mod:`tests.fuzz.values`: hostile argument values.
* :mod:`tests.fuzz.models`: valid, corrupt and lying model files.
* :mod:`tests.fuzz.common`: the campaigns' shared context and checked calls.
* :mod:`tests.fuzz.inputs`, :mod:`tests.fuzz.arguments`, :mod:`tests.fuzz.files`,
  :mod:`tests.fuzz.cli`, :mod:`tests.fuzz.export`:
  the campaigns.
* :mod:`tests.fuzz.worker`: the command line that runs one campaign.
"""
