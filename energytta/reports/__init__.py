"""The library behind the report scripts in tools/: each thin `tools/X.py` runs the
`main(argv)` of a module here (`tools/quality.py` -> `quality`, ...).

Shared pieces:
- `rows`: generate captions with a checkpoint, score them, save and reuse scored rows
  (`quality`, whose page `quality_report` renders, and `sampling_sweep`);
- `spectral`: manifest rows and spectral convergence (`griffinlim_report`,
  `codec_report`).

A module with a command has `build_parser()` and `main(argv)`; `main` raises `UserError`
on bad input, and the script turns it into one line with `energytta.errors.run_cli`.
"""
