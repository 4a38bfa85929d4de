# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Data sources that write MONAI datalists with text: the public data sets in the layout they are downloaded in
(:mod:`~monai_vlseg.datasets.public`, front door ``python -m monai_vlseg.datasets.prepare``) and the synthetic demo
sets the bundles use by default (:mod:`~monai_vlseg.datasets.synthetic`). PACS export folders: :mod:`monai_vlseg.io.ingest`.
"""
