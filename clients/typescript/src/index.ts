// @nachbar/client: Node clients for nachbar-db (DBService) and nachbar-ai (AIService).

export { AIClient, AI_UPSERT_BATCH, DEFAULT_AI_ADDRESS, imageFile } from './ai';
export type {
  AICreateStoreOptions,
  AIGetByPredicateOptions,
  AISearchOptions,
  AIUpsertOptions,
  MissingOkCallOptions,
  RerankCallOptions,
  TrainCallOptions,
  TruncationOptions,
} from './ai';
export { DEFAULT_TIMEOUT_MS, MAX_MESSAGE_BYTES, channelTarget } from './call';
export type { ClientOptions } from './call';
export { DBClient, DEFAULT_DB_ADDRESS, UPSERT_BATCH } from './db';
export type {
  CreateStoreOptions,
  DBSearchOptions,
  GetByPredicateOptions,
  IncludeVectorsOptions,
  MissingOkOptions,
  ReadOptions,
  UpsertOptions,
} from './db';
export { DEFAULTS } from './defaults';
export type { Defaults } from './defaults';
export {
  AbortedError,
  AlreadyExistsError,
  CancelledError,
  DataLossError,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NachbarError,
  NotFoundError,
  OutOfRangeError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  errorFromStatus,
  statusName,
} from './errors';
export type { NachbarErrorOptions, StatusName } from './errors';
export { PROTO_ROOT } from './protos';
export * from './types';
export { filterToProto, metadataFromProto, metadataToProto, valueFromProto, valueToProto } from './values';
