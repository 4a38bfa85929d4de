"""Library of the monai-vlseg MONAI Label app (infer tasks), laid out as MONAI Label sample apps keep theirs."""
