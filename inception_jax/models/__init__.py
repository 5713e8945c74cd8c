"""The model zoo. Importing this package registers every family."""

from inception_jax.models import inception_v3  # noqa: F401  (registers its variants)
from inception_jax.models.registry import (ModelInfo, ModelOutput, create_model, list_models,  # noqa: F401
                                           model_info, resolve_name)
