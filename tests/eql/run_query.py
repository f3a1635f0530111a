#!/usr/bin/env python3
"""Run an EQL query, in Elasticsearch's syntax, over ECS JSON lines with
the `eql` engine from PyPI; print each matching event as one JSON line.

Usage: run_query.py QUERY_FILE EVENTS_FILE

Strategy: the query text is read unchanged from QUERY_FILE (a copy of the
seed rule's query, tests/eql/sensitive-files-compression.eql). The only
adaptation is to the engine, not the query: Elasticsearch matches a
multi-valued field (process.args, event.type, event.category) when any of
its values matches, while eql's Python engine compares the whole list and
never matches. `AnyValueEngine` evaluates every comparison and function
call whose first operand is a field once per value of that field, and
holds when one holds. Each occurrence of a field is fanned out on its own,
as Elasticsearch does: `process.args: "tar" and process.args: "/etc/shadow"`
may hold through two different arguments.
"""

import json
import sys

import eql
from eql.ast import Field, FunctionCall, String
from eql.parser import elasticsearch_syntax, ignore_missing_functions


class AnyValueEngine(eql.PythonEngine):
    """eql's Python engine with Elasticsearch's multi-valued fields."""

    def _convert_comparison(self, node):
        if not isinstance(node.left, Field):
            return super()._convert_comparison(node)
        get_left = self.convert(node.left)
        get_right = self.convert(node.right)
        # As the parent class chooses its comparator.
        strings = FunctionCall, String, Field
        if isinstance(node.right, strings):
            compare = self.check_types(self.lowercase(node.function, always=False))
        else:
            compare = self.check_types(node.function)

        def callback(scope):
            left, right = get_left(scope), get_right(scope)
            if isinstance(left, list):
                return any(compare(v, right) for v in left)
            return compare(left, right)

        return callback

    def _convert_function_call(self, node):
        args = node.arguments
        if not args or not isinstance(args[0], Field):
            return super()._convert_function_call(node)
        if getattr(self, "_function_{}".format(self.camelized(node.name)), None):
            return super()._convert_function_call(node)
        func = self._functions.get(node.name, node.signature)
        if hasattr(func, "get_callback"):
            func = func.get_callback(*args)
        get_first = self.convert(args[0])
        get_rest = self._convert_tuple(args[1:])

        def callback(scope):
            first, rest = get_first(scope), get_rest(scope)
            if isinstance(first, list):
                return any(func(v, *rest) for v in first)
            return func(first, *rest)

        return callback


def main():
    query_file, events_file = sys.argv[1], sys.argv[2]
    with open(query_file) as f:
        text = f.read()
    with elasticsearch_syntax, ignore_missing_functions:
        query = eql.parse_query(text)
    # `process where` selects on the event type; ECS gives it as
    # event.category.
    events = []
    with open(events_file) as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                cats = doc.get("event", {}).get("category") or ["any"]
                for cat in cats if isinstance(cats, list) else [cats]:
                    events.append(eql.Event(cat, 0, doc))
    engine = AnyValueEngine()
    engine.add_query(query)
    matched = []
    engine.add_output_hook(lambda e: matched.extend(e.events))
    engine.stream_events(events)
    for e in matched:
        print(json.dumps(e.data, sort_keys=True))


if __name__ == "__main__":
    main()
