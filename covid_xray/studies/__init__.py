"""The studies: `python -m covid_xray.studies.<name>` commands that compute something about a model
or the dataset and write it to reports/ (or a checkpoint's sidecar), for `covid_xray.report` to read.

| command | writes |
|---|---|
| `data download/info/audit` | the dataset; `reports/audit.json` |
| `evaluate --model M [--data-dir DIR --name NAME]` | `reports/<model>/[NAME/]`: metrics, predictions |
| `calibrate fit --model M` | `reports/<model>/calibration.json`, `reliability.png`, the sidecar's T |
| `oof_calibrate --model M --runs ...`, `oof_calibrate apply` | `calibration_oof.json`, `.png`; the T |
| `faithfulness --model M` | `reports/<model>/faithfulness.json` + `.png` |
| `ood fit/measure --model M` | `checkpoints/ood_<model>.json`; `reports/ood.json` |
| `shortcuts --model M` | `reports/<model>/shortcuts.json` |
| `neighbours --model M` | (timings and leave-one-out agreement of the similar-films index) |
| `weight_averaging` | `reports/<model>/cv_weight_averaging.json` |
| `weights fetch/fetch-kaggle/install/verify` | the CheXNet base weights |

Compute lives in the package's modules; these hold the command lines, the dataset I/O of a study
and the writing of its files. Command strings quoted elsewhere come from `covid_xray.config`.
"""
