"""The lab: report generators, studies and their pages (not installed; it imports
`energytta`, never the reverse).

Run a report from the repository root as a module: `python -m research.quality --help`.
Each module with a command has `build_parser()` and `main(argv)`; `main` raises `UserError`
on bad input, and the module's `__main__` turns it into one line with
`energytta.errors.run_cli`. The pages these write live in `research/reports/`.

Shared pieces:
- `rows`: generate captions with a checkpoint, score them, save and reuse scored rows
  (`quality`, whose page `quality_report` renders, and `sampling_sweep`);
- `spectral`: manifest rows and spectral convergence (`griffinlim_report`,
  `codec_report`).
"""
