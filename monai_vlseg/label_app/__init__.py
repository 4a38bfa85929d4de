"""MONAI Label app for the text-guided monai-vlseg bundles.

A MONAI Label app is a folder with a ``main.py`` (a subclass of ``monailabel.interfaces.app.MONAILabelApp``) and
its bundles under ``model/<name>``. This package holds that app's code:

- ``main.py``: :class:`VLSegApp`, the app (serves local bundles only; never contacts the model zoo);
- ``lib/infers/text_bundle.py``: :class:`TextBundleInferTask`, a MONAI Label bundle infer task that takes the text
  prompt from the request and calls ``network(image, input_ids, attention_mask)``;
- ``prepare.py``: ``python -m monai_vlseg.label_app.prepare --bundle bundles/ua_vls --app OUT_DIR`` lays out an app
  folder (``main.py``, ``lib/`` and the bundle at ``model/<name>``).

Importing this package does not import ``monailabel``: ``prepare`` runs in any environment, while the app itself
runs inside ``monailabel start_server`` (the ``.venv-label`` environment made by ``make label``).
"""
