// Plain JS values <-> protobuf messages for metadata, filters, indexes and enums.

import { InvalidArgumentError } from './errors';
import type { Condition } from './generated/nachbar/common/v1/Condition';
import type { Filter } from './generated/nachbar/common/v1/Filter';
import type { IndexConfig as IndexConfigMessage, IndexConfig__Output } from './generated/nachbar/common/v1/IndexConfig';
import type { MetadataValue as MetadataValueMessage, MetadataValue__Output } from './generated/nachbar/common/v1/MetadataValue';
import type { Metric__Output } from './generated/nachbar/common/v1/Metric';
import type { SearchMode__Output } from './generated/nachbar/common/v1/SearchMode';
import type { RerankFusion__Output } from './generated/nachbar/ai/v1/RerankFusion';
import type { RecommendStrategy__Output } from './generated/nachbar/db/v1/RecommendStrategy';
import type { HybridOptions as HybridOptionsMessage } from './generated/nachbar/db/v1/HybridOptions';
import type { TruncationPolicy__Output } from './generated/nachbar/ai/v1/TruncationPolicy';
import type {
  FilterSpec,
  HybridOptions,
  IndexConfig,
  Metadata,
  MetadataInput,
  MetadataValue,
  MetadataValueInput,
  ExploreOptions,
  Metric,
  RecommendStrategy,
  RerankFusion,
  SearchMode,
  TruncationPolicy,
} from './types';

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

const FILTER_OPS = {
  eq: 'OP_EQ',
  ne: 'OP_NE',
  lt: 'OP_LT',
  lte: 'OP_LTE',
  gt: 'OP_GT',
  gte: 'OP_GTE',
  in: 'OP_IN',
  not_in: 'OP_NOT_IN',
  exists: 'OP_EXISTS',
} as const;

type FilterOp = keyof typeof FILTER_OPS;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

function repr(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function int64String(value: number | bigint | string, what: string): string {
  let big: bigint;
  if (typeof value === 'bigint') {
    big = value;
  } else if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) {
      throw new InvalidArgumentError(`${what}: ${value} is not a safe integer; pass a bigint for large ints`);
    }
    big = BigInt(value);
  } else {
    if (!/^-?\d+$/.test(value)) {
      throw new InvalidArgumentError(`${what}: ${repr(value)} is not a decimal integer`);
    }
    big = BigInt(value);
  }
  if (big < INT64_MIN || big > INT64_MAX) {
    throw new InvalidArgumentError(`${what}: ${big} is outside the 64-bit integer range`);
  }
  return big.toString();
}

/** The protobuf MetadataValue for a plain value (see `MetadataValueInput` for the rules). */
export function valueToProto(value: MetadataValueInput, what = 'metadata value'): MetadataValueMessage {
  switch (typeof value) {
    case 'string':
      return { string_value: value };
    case 'boolean':
      return { bool_value: value };
    case 'bigint':
      return { int_value: int64String(value, what) };
    case 'number':
      return Number.isSafeInteger(value) ? { int_value: value } : { float_value: value };
    default:
      break;
  }
  if (value instanceof Uint8Array) return { bytes_value: value };
  if (Array.isArray(value)) {
    if (value.every((item) => typeof item === 'string')) {
      return { string_list_value: { values: value } };
    }
    throw new InvalidArgumentError(`${what}: a list may hold only strings, got ${repr(value)}`);
  }
  if (isPlainObject(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === 'int') {
      return { int_value: int64String((value as { int: number | bigint | string }).int, what) };
    }
    if (keys.length === 1 && keys[0] === 'float' && typeof (value as { float: unknown }).float === 'number') {
      return { float_value: (value as { float: number }).float };
    }
  }
  throw new InvalidArgumentError(
    `${what}: unsupported value ${repr(value)}; use a string, number, bigint, boolean, ` +
      'Uint8Array, string[], {int: n} or {float: n}',
  );
}

/** The plain value of a protobuf MetadataValue. */
export function valueFromProto(value: MetadataValue__Output): MetadataValue {
  switch (value.kind) {
    case 'string_value':
      return value.string_value ?? '';
    case 'int_value': {
      const big = BigInt(value.int_value ?? '0');
      return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    }
    case 'float_value':
      return value.float_value ?? 0;
    case 'bool_value':
      return value.bool_value ?? false;
    case 'bytes_value':
      return value.bytes_value ?? Buffer.alloc(0);
    case 'string_list_value':
      return [...(value.string_list_value?.values ?? [])];
    default:
      throw new InvalidArgumentError('the server sent a metadata value with no kind set');
  }
}

export function metadataToProto(metadata: MetadataInput | undefined): Record<string, MetadataValueMessage> {
  const result: Record<string, MetadataValueMessage> = {};
  for (const [key, value] of Object.entries(metadata ?? {})) {
    result[key] = valueToProto(value, `metadata field ${JSON.stringify(key)}`);
  }
  return result;
}

export function metadataFromProto(metadata: Record<string, MetadataValue__Output> | undefined): Metadata {
  const result: Metadata = {};
  for (const [key, value] of Object.entries(metadata ?? {})) result[key] = valueFromProto(value);
  return result;
}

function conditionFilter(field: string, op: FilterOp, operand: unknown): Filter {
  const what = `filter on ${JSON.stringify(field)}`;
  const condition: Condition = { field, op: FILTER_OPS[op] };
  if (op === 'in' || op === 'not_in') {
    if (!Array.isArray(operand) || operand.length === 0) {
      throw new InvalidArgumentError(`${JSON.stringify(op)} on ${JSON.stringify(field)} takes a non-empty list`);
    }
    condition.values = operand.map((item) => valueToProto(item as MetadataValueInput, what));
  } else if (op !== 'exists') {
    condition.value = valueToProto(operand as MetadataValueInput, what);
  }
  return { condition };
}

/**
 * The protobuf Filter for a JSON-shaped filter, with the same forms and checks as the Python
 * client's `filter_from_dict`.
 */
export function filterToProto(spec: FilterSpec): Filter {
  if (!isPlainObject(spec) || Object.keys(spec).length === 0) {
    throw new InvalidArgumentError(`a filter must be a non-empty object, got ${repr(spec)}`);
  }
  const parts: Filter[] = [];
  for (const [key, body] of Object.entries(spec)) {
    if (key === 'all_of' || key === 'any_of') {
      if (!Array.isArray(body) || body.length === 0) {
        throw new InvalidArgumentError(`${JSON.stringify(key)} takes a non-empty list of filters`);
      }
      const list = { filters: body.map((item) => filterToProto(item as FilterSpec)) };
      parts.push(key === 'all_of' ? { all_of: list } : { any_of: list });
    } else if (key === 'not') {
      parts.push({ negate: filterToProto(body as FilterSpec) });
    } else {
      if (!isPlainObject(body) || Object.keys(body).length === 0) {
        throw new InvalidArgumentError(
          `field ${JSON.stringify(key)} needs an object of operators, e.g. {"eq": "red"}`,
        );
      }
      for (const [op, operand] of Object.entries(body)) {
        if (!Object.hasOwn(FILTER_OPS, op)) {
          throw new InvalidArgumentError(
            `unknown filter operator ${JSON.stringify(op)}; use one of ${Object.keys(FILTER_OPS).sort().join(', ')}`,
          );
        }
        parts.push(conditionFilter(key, op as FilterOp, operand));
      }
    }
  }
  return parts.length === 1 ? parts[0]! : { all_of: { filters: parts } };
}

export function optionalFilter(spec: FilterSpec | undefined | null): Filter | null {
  return spec === undefined || spec === null ? null : filterToProto(spec);
}

const METRICS: Record<Metric, Metric__Output> = {
  cosine: 'METRIC_COSINE',
  l2: 'METRIC_L2',
  ip: 'METRIC_INNER_PRODUCT',
};

export function metricToProto(metric: Metric | undefined): Metric__Output {
  if (metric === undefined) return 'METRIC_UNSPECIFIED';
  const name = METRICS[metric];
  if (name === undefined) {
    throw new InvalidArgumentError(`unknown metric ${repr(metric)}; use one of ${Object.keys(METRICS).join(', ')}`);
  }
  return name;
}

export function metricFromProto(name: string): Metric {
  for (const [metric, protoName] of Object.entries(METRICS)) {
    if (protoName === name) return metric as Metric;
  }
  // METRIC_UNSPECIFIED is served as the documented default.
  return 'cosine';
}

const SEARCH_MODES: Record<SearchMode, SearchMode__Output> = {
  auto: 'SEARCH_MODE_AUTO',
  exact: 'SEARCH_MODE_EXACT',
  hnsw: 'SEARCH_MODE_HNSW',
};

export function searchModeToProto(mode: SearchMode | undefined): SearchMode__Output {
  const name = SEARCH_MODES[mode ?? 'auto'];
  if (name === undefined) {
    throw new InvalidArgumentError(`unknown search mode ${repr(mode)}; use one of auto, exact, hnsw`);
  }
  return name;
}

const RERANK_FUSIONS: Record<RerankFusion, RerankFusion__Output> = {
  none: 'RERANK_FUSION_NONE',
  rrf: 'RERANK_FUSION_RRF',
  blend: 'RERANK_FUSION_BLEND',
};

export function rerankFusionToProto(fusion: RerankFusion | undefined): RerankFusion__Output {
  const name = RERANK_FUSIONS[fusion ?? 'none'];
  if (name === undefined) {
    throw new InvalidArgumentError(`unknown rerank fusion ${repr(fusion)}; use one of none, rrf, blend`);
  }
  return name;
}

const RECOMMEND_STRATEGIES: Record<RecommendStrategy, RecommendStrategy__Output> = {
  average_vector: 'RECOMMEND_STRATEGY_AVERAGE_VECTOR',
  best_score: 'RECOMMEND_STRATEGY_BEST_SCORE',
};

/** GetSimN's MMR and recommend fields (the same on nachbar-db and nachbar-ai). */
export function exploreToProto(options: ExploreOptions): {
  mmr_lambda?: number;
  mmr_candidates: number;
  positive_ids: string[];
  negative_ids: string[];
  recommend_strategy: RecommendStrategy__Output;
  recommend_candidates: number;
} {
  const strategy = RECOMMEND_STRATEGIES[options.strategy ?? 'average_vector'];
  if (strategy === undefined) {
    throw new InvalidArgumentError(`unknown recommend strategy ${repr(options.strategy)}; use average_vector or best_score`);
  }
  const positive = options.positive ?? [];
  const negative = options.negative ?? [];
  const examples = positive.length > 0 || negative.length > 0;
  if (options.mmr === undefined && (options.mmrCandidates ?? 0) !== 0) {
    throw new InvalidArgumentError('mmrCandidates needs mmr (a lambda in [0, 1])');
  }
  if (!examples && ((options.strategy ?? 'average_vector') !== 'average_vector' || (options.recommendCandidates ?? 0) !== 0)) {
    throw new InvalidArgumentError('strategy and recommendCandidates need positive or negative ids');
  }
  // As the Python client: the pool sizes and the strategy go only with what they belong to.
  const fields = {
    mmr_candidates: options.mmr === undefined ? 0 : uint32(options.mmrCandidates ?? 0, 'mmrCandidates'),
    positive_ids: positive,
    negative_ids: negative,
    recommend_strategy: examples ? strategy : ('RECOMMEND_STRATEGY_UNSPECIFIED' as const),
    recommend_candidates: examples ? uint32(options.recommendCandidates ?? 0, 'recommendCandidates') : 0,
  };
  return options.mmr === undefined ? fields : { mmr_lambda: options.mmr, ...fields };
}

/** The HybridOptions message of a GetSimN; undefined leaves the server's defaults. */
export function hybridToProto(options: HybridOptions | undefined): HybridOptionsMessage | undefined {
  if (options === undefined) return undefined;
  const fusion = options.fusion ?? 'blend';
  if (fusion !== 'rrf' && fusion !== 'blend') {
    throw new InvalidArgumentError(`unknown hybrid fusion ${repr(fusion)}; use rrf or blend`);
  }
  const message: HybridOptionsMessage = {
    fusion: fusion === 'rrf' ? 'HYBRID_FUSION_RRF' : 'HYBRID_FUSION_BLEND',
    rrf_k: uint32(options.rrfK ?? 0, 'rrfK'),
    candidates: uint32(options.candidates ?? 0, 'candidates'),
  };
  if (options.vectorWeight !== undefined) message.vector_weight = options.vectorWeight;
  return message;
}

/** A match's optional score, present only when the server set it. */
export function optionalScore(present: string | undefined, value: number | null | undefined): number | undefined {
  return present !== undefined && value !== null && value !== undefined ? value : undefined;
}

const TRUNCATION: Record<TruncationPolicy, TruncationPolicy__Output> = {
  error: 'TRUNCATION_POLICY_ERROR',
  truncate: 'TRUNCATION_POLICY_TRUNCATE',
};

export function truncationToProto(policy: TruncationPolicy | undefined): TruncationPolicy__Output {
  const name = TRUNCATION[policy ?? 'error'];
  if (name === undefined) {
    throw new InvalidArgumentError(`unknown truncation policy ${repr(policy)}; use error or truncate`);
  }
  return name;
}

export function indexToProto(index: IndexConfig | undefined): IndexConfigMessage | null {
  if (index === undefined) return null;
  if (index.kind === 'exact') return { exact: {} };
  if (index.kind === 'hnsw') {
    return {
      hnsw: {
        m: uint32(index.m ?? 0, 'index.m'),
        ef_construction: uint32(index.efConstruction ?? 0, 'index.efConstruction'),
        ef_search: uint32(index.efSearch ?? 0, 'index.efSearch'),
      },
    };
  }
  throw new InvalidArgumentError(`unknown index ${repr(index)}; use {kind: 'hnsw', ...} or {kind: 'exact'}`);
}

export function indexFromProto(index: IndexConfig__Output | null): IndexConfig {
  if (index?.kind === 'exact') return { kind: 'exact' };
  const hnsw = index?.hnsw;
  return { kind: 'hnsw', m: hnsw?.m ?? 0, efConstruction: hnsw?.ef_construction ?? 0, efSearch: hnsw?.ef_search ?? 0 };
}

/** Checks a count, size or limit before it reaches a uint32 field. */
export function uint32(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new InvalidArgumentError(`${what} must be an integer from 0 to 4294967295, got ${repr(value)}`);
  }
  return value;
}

/** A uint64 the loader decoded as a decimal string. */
export function uint64(value: string | number | undefined): number {
  return Number(value ?? 0);
}

export function vectorToProto(vector: ArrayLike<number>, what: string): number[] {
  if (vector === null || typeof vector !== 'object' || typeof vector.length !== 'number') {
    throw new InvalidArgumentError(`${what} must be an array of numbers or a Float32Array`);
  }
  const values = Array.from(vector);
  if (!values.every((item) => typeof item === 'number')) {
    throw new InvalidArgumentError(`${what} must hold only numbers`);
  }
  return values;
}
