"""schemathesis hooks of scripts/fuzz-api (loaded through SCHEMATHESIS_HOOKS=hooks).

A list cursor is opaque: only a `next_cursor` the server issued is one, and anything else
is a 400 whatever its shape, which no schema can say. So a case meant to be valid never
carries an invented cursor (the cursors the server does issue are covered by the
integration tests); invalid cases still send invented ones, which must be refused.
"""

import schemathesis


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is not None and meta.generation.mode.is_positive and case.query:
        case.query.pop("cursor", None)
    return case
