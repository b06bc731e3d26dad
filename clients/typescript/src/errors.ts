import { status as Status, type ServiceError } from '@grpc/grpc-js';

/** The name of a gRPC status code, as `grpc.status` spells it. */
export type StatusName =
  | 'OK'
  | 'CANCELLED'
  | 'UNKNOWN'
  | 'INVALID_ARGUMENT'
  | 'DEADLINE_EXCEEDED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'PERMISSION_DENIED'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'OUT_OF_RANGE'
  | 'UNIMPLEMENTED'
  | 'INTERNAL'
  | 'UNAVAILABLE'
  | 'DATA_LOSS'
  | 'UNAUTHENTICATED';

export interface NachbarErrorOptions {
  /** The RPC that failed, e.g. `/nachbar.db.v1.DBService/GetStore`. */
  method?: string;
  cause?: unknown;
}

/**
 * A failed call. `code` is the gRPC status name (switch on it, or catch a subclass such as
 * `NotFoundError`); `message` is the server's explanation of what went wrong and what to do.
 * Arguments the client rejects before sending raise `InvalidArgumentError` too.
 */
export class NachbarError extends Error {
  override name = 'NachbarError';
  readonly code: StatusName;
  readonly method: string | undefined;

  constructor(message: string, code: StatusName = 'UNKNOWN', options: NachbarErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.method = options.method;
  }
}

export class CancelledError extends NachbarError {
  override name = 'CancelledError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'CANCELLED', options);
  }
}

export class InvalidArgumentError extends NachbarError {
  override name = 'InvalidArgumentError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'INVALID_ARGUMENT', options);
  }
}

export class DeadlineExceededError extends NachbarError {
  override name = 'DeadlineExceededError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'DEADLINE_EXCEEDED', options);
  }
}

export class NotFoundError extends NachbarError {
  override name = 'NotFoundError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'NOT_FOUND', options);
  }
}

export class AlreadyExistsError extends NachbarError {
  override name = 'AlreadyExistsError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'ALREADY_EXISTS', options);
  }
}

export class ResourceExhaustedError extends NachbarError {
  override name = 'ResourceExhaustedError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'RESOURCE_EXHAUSTED', options);
  }
}

export class FailedPreconditionError extends NachbarError {
  override name = 'FailedPreconditionError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'FAILED_PRECONDITION', options);
  }
}

export class OutOfRangeError extends NachbarError {
  override name = 'OutOfRangeError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'OUT_OF_RANGE', options);
  }
}

export class UnimplementedError extends NachbarError {
  override name = 'UnimplementedError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'UNIMPLEMENTED', options);
  }
}

export class InternalError extends NachbarError {
  override name = 'InternalError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'INTERNAL', options);
  }
}

export class UnavailableError extends NachbarError {
  override name = 'UnavailableError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'UNAVAILABLE', options);
  }
}

/** A request named a store that was dropped and created again since it was read (nachbar-db's
 * `expectedStoreId`): read it again and retry. */
export class AbortedError extends NachbarError {
  override name = 'AbortedError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'ABORTED', options);
  }
}

export class DataLossError extends NachbarError {
  override name = 'DataLossError';
  constructor(message: string, options?: NachbarErrorOptions) {
    super(message, 'DATA_LOSS', options);
  }
}

type ErrorClass = new (message: string, options?: NachbarErrorOptions) => NachbarError;

const ERROR_CLASSES: Partial<Record<StatusName, ErrorClass>> = {
  CANCELLED: CancelledError,
  INVALID_ARGUMENT: InvalidArgumentError,
  DEADLINE_EXCEEDED: DeadlineExceededError,
  NOT_FOUND: NotFoundError,
  ALREADY_EXISTS: AlreadyExistsError,
  RESOURCE_EXHAUSTED: ResourceExhaustedError,
  FAILED_PRECONDITION: FailedPreconditionError,
  OUT_OF_RANGE: OutOfRangeError,
  UNIMPLEMENTED: UnimplementedError,
  INTERNAL: InternalError,
  UNAVAILABLE: UnavailableError,
  DATA_LOSS: DataLossError,
  ABORTED: AbortedError,
};

/** The status name of a numeric gRPC code ('UNKNOWN' for a number gRPC does not define). */
export function statusName(code: number): StatusName {
  const name = (Status as unknown as Record<number, string | undefined>)[code];
  return (name ?? 'UNKNOWN') as StatusName;
}

/**
 * The typed error for a failed call: the subclass for its code when there is one, else a
 * plain `NachbarError` carrying the code.
 */
export function errorFromStatus(
  error: Pick<ServiceError, 'code' | 'details'>,
  options: NachbarErrorOptions & { address?: string } = {},
): NachbarError {
  const code = statusName(error.code);
  let message = error.details || code;
  if (code === 'UNAVAILABLE' && options.address !== undefined) {
    message += ` (is the server running at ${options.address}?)`;
  }
  const errorClass = ERROR_CLASSES[code];
  const errorOptions = { method: options.method, cause: options.cause };
  return errorClass ? new errorClass(message, errorOptions) : new NachbarError(message, code, errorOptions);
}
