"""Steering configs: a YAML list of named steering vectors, built and applied together.

A config names the vectors to build and how hard to push with each::

    vectors:
      - name: security_conscious
        positive_prompt: "I carefully consider security implications."
        negative_prompt: "I ignore security concerns."   # absent: a single-prompt vector
        layer: 15
        coefficient: 2.0
        normalize: false

Every vector is built at its ``layer`` from its prompts (or read from ``vector_file``, a saved
:class:`~steerlab.vectors.SteeringVector`; a relative path is taken from the YAML file's own
directory) and becomes one :class:`~steerlab.interventions.Intervention`; all of them apply
together. An empty list (``vectors: []``) is the unsteered baseline.

What the numbers mean (stated for each vector in its ``meaning``):

- The *built vector* at a layer is, for a ``positive_prompt`` / ``negative_prompt`` pair, the
  activation difference act(positive) - act(negative) (method ``contrast``; ``labeled`` and
  ``pca`` also fit prompt lists); for a lone ``positive_prompt``, that prompt's activation
  itself (method ``single``). The activation is read at ``hook`` (default ``resid_post``) and
  ``position``: the ``last`` token (default) or the ``mean`` over the prompt's tokens.
- ``normalize: false`` (default): the intervention adds ``coefficient`` x the built vector as is
  (scale ``diff``), so coefficient 1 adds one raw difference, and the size added is
  ``coefficient`` x the vector's norm. The guide "0.5-1 subtle, 1-3 moderate, 3+ strong" reads
  in these units.
- ``normalize: true``: the intervention adds ``coefficient`` x the unit direction (scale
  ``absolute``): ``coefficient`` is in residual-stream units, so it needs to be comparable to the
  residual norm (``mean_resid_norm``, often 10^2 and more) to do anything.
- An explicit ``scale`` (``absolute`` | ``diff`` | ``resid``) overrides what ``normalize`` implies
  (``resid``: ``coefficient`` x the mean residual norm recorded at construction).
- ``intervention: ablate`` removes ``coefficient`` x the residual's projection on the unit
  direction (1 removes it); ``clamp`` sets that projection to ``coefficient`` x the scale.

Position ``mean`` averages over every prompt token, the first one included. In most language
models the first token is an attention sink whose residual norm dwarfs the others' (on
SmolLM2-135M about 24,000 against about 200 from layer 12 on), so the mean of two prompts of
different token lengths differs mostly by ``(1/T+ - 1/T-)`` x that first activation: the built
vector then points along the first token, not along the contrast. :func:`build_steering` measures
this (``first_token_cosine``) and warns; ``position: last`` (the default for this reason) or
prompts of equal token length avoid it.

:func:`load_steering_config` validates a file once (unknown keys, bad values and YAML errors are
one sentence naming the file, the vector and the key); :func:`check_against_model` checks layers
against a model; :func:`build_steering` builds every vector (one recording per distinct set of
prompts, whatever the number of layers asked of it) and returns the interventions with what was
resolved for each (norms, scale, the exact size added), to save next to results.

The package has one module per step: :mod:`~steerlab.steering_config.spec` (the file model),
:mod:`~steerlab.steering_config.load` (reading and checking a file) and
:mod:`~steerlab.steering_config.build` (building the interventions).
"""

from steerlab.steering_config.build import (
    FIRST_TOKEN_WARN,
    ResolvedSteering,
    ResolvedVector,
    build_steering,
)
from steerlab.steering_config.load import (
    check_against_model,
    load_steering_config,
    parse_steering_config,
)
from steerlab.steering_config.spec import (
    PAIR_METHODS,
    POSITIONS,
    SINGLE_METHODS,
    VECTOR_KEYS,
    SteeringConfigError,
    SteeringConfigFile,
    VectorSpec,
)

__all__ = [
    "FIRST_TOKEN_WARN",
    "PAIR_METHODS",
    "POSITIONS",
    "SINGLE_METHODS",
    "VECTOR_KEYS",
    "ResolvedSteering",
    "ResolvedVector",
    "SteeringConfigError",
    "SteeringConfigFile",
    "VectorSpec",
    "build_steering",
    "check_against_model",
    "load_steering_config",
    "parse_steering_config",
]
