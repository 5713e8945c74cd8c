"""The model zoo. Importing this package registers every family."""

# Each family module registers its variants on import.
from inception_jax.models import (bn_inception, classic, googlenet, inception_v3, inception_v4,  # noqa: F401
                                  xception)
from inception_jax.models.registry import (ModelInfo, ModelOutput, create_model, list_models,  # noqa: F401
                                           model_info, resolve_name)
