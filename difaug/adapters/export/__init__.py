"""Export a run's auxiliary images as files in the layout an external FSS trainer reads.

- `layouts`: the registry of layouts (`LAYOUTS`: `diffss-bam`, `fss`, `folder`), each a `Layout`
  that names the files and refuses a run it cannot describe; a new layout is one registered class.
- `result`: what an export did (`ExportResult`, per-support coverage, skipped images) and
  `ExportError`.
- `folder_report`: `DIR/difaug-export.json`, one entry per run exported into DIR with the files it
  holds, and the removal of an earlier export's files that the new one does not write.
- `exporter`: `export_run`, which decides every name, takes DIR's lock, writes the files (each image
  decoded first) and reports coverage.
"""
