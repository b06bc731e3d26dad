import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { status } from '@grpc/grpc-js';
import {
  AlreadyExistsError,
  DeadlineExceededError,
  InvalidArgumentError,
  NachbarError,
  NotFoundError,
  OutOfRangeError,
  UnavailableError,
  errorFromStatus,
  statusName,
} from '../src/index';

describe('errorFromStatus', () => {
  it('gives the subclass of each code, with the server message and the status name', () => {
    const cases = [
      [status.NOT_FOUND, NotFoundError, 'NOT_FOUND'],
      [status.INVALID_ARGUMENT, InvalidArgumentError, 'INVALID_ARGUMENT'],
      [status.ALREADY_EXISTS, AlreadyExistsError, 'ALREADY_EXISTS'],
      [status.OUT_OF_RANGE, OutOfRangeError, 'OUT_OF_RANGE'],
      [status.DEADLINE_EXCEEDED, DeadlineExceededError, 'DEADLINE_EXCEEDED'],
    ] as const;
    for (const [code, errorClass, name] of cases) {
      const error = errorFromStatus({ code, details: 'store "x" does not exist' }, { method: '/m' });
      assert.ok(error instanceof errorClass, `${name} -> ${error.name}`);
      assert.ok(error instanceof NachbarError);
      assert.ok(error instanceof Error);
      assert.equal(error.code, name);
      assert.equal(error.name, errorClass.name);
      assert.equal(error.message, 'store "x" does not exist');
      assert.equal(error.method, '/m');
    }
  });

  it('keeps the code of statuses without a subclass', () => {
    const error = errorFromStatus({ code: status.UNKNOWN, details: '' });
    assert.equal(error.constructor, NachbarError);
    assert.equal(error.code, 'UNKNOWN');
    assert.equal(error.message, 'UNKNOWN');
    assert.equal(statusName(999), 'UNKNOWN');
  });

  it('names the address when the server cannot be reached', () => {
    const error = errorFromStatus({ code: status.UNAVAILABLE, details: 'No connection established' }, { address: '127.0.0.1:1' });
    assert.ok(error instanceof UnavailableError);
    assert.match(error.message, /No connection established \(is the server running at 127\.0\.0\.1:1\?\)/);
  });
});
