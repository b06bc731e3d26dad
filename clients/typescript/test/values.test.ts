import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { InvalidArgumentError, filterToProto, metadataToProto, valueFromProto, valueToProto, type FilterSpec } from '../src/index';
import { dbService } from '../src/protos';
import { BIN_DIR } from './servers';

describe('metadata values', () => {
  it('sends safe integers as ints and other numbers as floats', () => {
    assert.deepEqual(valueToProto(2020), { int_value: 2020 });
    assert.deepEqual(valueToProto(-3), { int_value: -3 });
    assert.deepEqual(valueToProto(2.5), { float_value: 2.5 });
    assert.deepEqual(valueToProto(1e300), { float_value: 1e300 });
    assert.deepEqual(valueToProto(Number.NaN), { float_value: Number.NaN });
  });

  it('forces the type with {int} and {float}, and takes bigints as ints', () => {
    assert.deepEqual(valueToProto({ float: 2 }), { float_value: 2 });
    assert.deepEqual(valueToProto({ int: 7 }), { int_value: '7' });
    assert.deepEqual(valueToProto({ int: '-9223372036854775808' }), { int_value: '-9223372036854775808' });
    assert.deepEqual(valueToProto(2n ** 62n), { int_value: '4611686018427387904' });
  });

  it('refuses ints outside 64 bits and values of no metadata type', () => {
    assert.throws(() => valueToProto(2n ** 63n), InvalidArgumentError);
    assert.throws(() => valueToProto({ int: 1.5 }), /not a safe integer/);
    assert.throws(() => valueToProto({ int: '12abc' }), /not a decimal integer/);
    assert.throws(() => valueToProto(['a', 1] as unknown as string[]), /only strings/);
    assert.throws(() => valueToProto({ when: 1 } as never), /unsupported value/);
    assert.throws(() => valueToProto(null as never), InvalidArgumentError);
  });

  it('maps strings, booleans, bytes and string lists one to one', () => {
    const bytes = Buffer.from([0, 255]);
    assert.deepEqual(metadataToProto({ s: 'x', b: true, raw: bytes, tags: ['a', 'b'] }), {
      s: { string_value: 'x' },
      b: { bool_value: true },
      raw: { bytes_value: bytes },
      tags: { string_list_value: { values: ['a', 'b'] } },
    });
    assert.throws(() => metadataToProto({ bad: undefined as never }), /metadata field "bad"/);
  });

  it('reads ints as numbers when safe and as bigints beyond 2^53', () => {
    assert.equal(valueFromProto({ kind: 'int_value', int_value: '42' }), 42);
    assert.equal(valueFromProto({ kind: 'int_value', int_value: '9007199254740993' }), 9007199254740993n);
    assert.equal(valueFromProto({ kind: 'int_value', int_value: '-9223372036854775808' }), -(2n ** 63n));
    assert.equal(valueFromProto({ kind: 'float_value', float_value: 0.5 }), 0.5);
    assert.deepEqual(valueFromProto({ kind: 'string_list_value', string_list_value: { values: ['a'] } }), ['a']);
    assert.throws(() => valueFromProto({}), /no kind/);
  });
});

describe('filters', () => {
  it('builds conditions, lists and negation', () => {
    assert.deepEqual(filterToProto({ kind: { eq: 'photo' } }), {
      condition: { field: 'kind', op: 'OP_EQ', value: { string_value: 'photo' } },
    });
    assert.deepEqual(filterToProto({ year: { in: [2020, 2021.5] } }), {
      condition: { field: 'year', op: 'OP_IN', values: [{ int_value: 2020 }, { float_value: 2021.5 }] },
    });
    assert.deepEqual(filterToProto({ not: { tags: { exists: true } } }), {
      negate: { condition: { field: 'tags', op: 'OP_EXISTS' } },
    });
  });

  it('ANDs several keys of one object, like all_of', () => {
    const both = filterToProto({ kind: { eq: 'photo' }, year: { gte: 2020 } });
    assert.deepEqual(both, filterToProto({ all_of: [{ kind: { eq: 'photo' } }, { year: { gte: 2020 } }] }));
    assert.deepEqual(filterToProto({ year: { gte: 2000, lt: 2010 } }), {
      all_of: {
        filters: [
          { condition: { field: 'year', op: 'OP_GTE', value: { int_value: 2000 } } },
          { condition: { field: 'year', op: 'OP_LT', value: { int_value: 2010 } } },
        ],
      },
    });
  });

  it('rejects malformed filters with a message that shows the right form', () => {
    assert.throws(() => filterToProto({}), /non-empty object/);
    assert.throws(() => filterToProto({ any_of: [] }), /"any_of" takes a non-empty list/);
    assert.throws(() => filterToProto({ kind: 'photo' } as unknown as FilterSpec), /needs an object of operators/);
    assert.throws(() => filterToProto({ kind: { like: 'p%' } } as unknown as FilterSpec), /unknown filter operator "like"/);
    assert.throws(() => filterToProto({ kind: { in: 'photo' } } as unknown as FilterSpec), /"in" on "kind" takes a non-empty list/);
  });

  const python = path.join(BIN_DIR, 'python');
  it('encodes to the same bytes as the Python client\'s filter_from_dict', { skip: !existsSync(python) && `${python} not found` }, () => {
    const specs: FilterSpec[] = [
      { kind: { eq: 'photo' } },
      { kind: { eq: 'photo' }, year: { gte: 2020 } },
      { any_of: [{ score: { lt: 0.5 } }, { not: { tags: { eq: 'draft' } } }] },
      { lang: { not_in: ['de', 'fr'] }, year: { in: [1999, 2001] }, starred: { eq: true } },
      { all_of: [{ tags: { exists: true } }, { title: { ne: 'x' } }, { n: { lte: -3 } }] },
    ];
    const script = [
      'import json, sys',
      'from nachbar.client.values import filter_from_dict',
      'from nachbar.v1 import db_pb2',
      'for spec in json.load(sys.stdin):',
      '    print(db_pb2.DeleteByPredicateRequest(filter=filter_from_dict(spec)).SerializeToString().hex())',
    ].join('\n');
    const fromPython = execFileSync(python, ['-c', script], { input: JSON.stringify(specs), encoding: 'utf8' })
      .trim()
      .split('\n');
    const serialize = dbService().DeleteByPredicate.requestSerialize;
    const fromTypeScript = specs.map((spec) => serialize({ filter: filterToProto(spec) }).toString('hex'));
    assert.deepEqual(fromTypeScript, fromPython);
  });
});
