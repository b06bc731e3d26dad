// The plain shapes the clients take and return. Counts and sizes (uint64 on the wire) are
// numbers: they stay far below 2^53.

/**
 * A metadata value as you write it.
 *
 * - `string`, `boolean`, `string[]`, `Uint8Array`/`Buffer` (bytes) map one to one.
 * - A `number` that is a safe integer is sent as an int, any other number as a float.
 * - A `bigint` is sent as an int (64-bit range).
 * - `{ int: n }` and `{ float: n }` force the type, e.g. `{ float: 2 }` stores the float 2.0.
 */
export type MetadataValueInput =
  | string
  | number
  | bigint
  | boolean
  | Uint8Array
  | string[]
  | { int: number | bigint | string }
  | { float: number };

export type MetadataInput = Record<string, MetadataValueInput>;

/**
 * A metadata value as the server returns it. Ints come back as `number` when they are safe
 * integers and as `bigint` beyond 2^53; floats as `number` (so a float 2.0 reads as `2`); bytes
 * as `Buffer`.
 */
export type MetadataValue = string | number | bigint | boolean | Buffer | string[];

export type Metadata = Record<string, MetadataValue>;

/** One operator on one field; the operand is a metadata value (a list for `in`/`not_in`). */
export interface ConditionSpec {
  eq?: MetadataValueInput;
  ne?: MetadataValueInput;
  lt?: MetadataValueInput;
  lte?: MetadataValueInput;
  gt?: MetadataValueInput;
  gte?: MetadataValueInput;
  in?: MetadataValueInput[];
  not_in?: MetadataValueInput[];
  /** The operand is ignored: `{ exists: true }`. */
  exists?: unknown;
}

/**
 * A filter in the JSON shape the Python client's `filter_from_dict` takes:
 * `{ field: { op: operand } }` with op one of eq, ne, lt, lte, gt, gte, in, not_in, exists;
 * `{ all_of: [...] }`, `{ any_of: [...] }`, `{ not: {...} }`. An object with several keys is
 * their AND, so `{ kind: { eq: 'photo' }, year: { gte: 2020 } }` needs both.
 */
export type FilterSpec = {
  all_of?: FilterSpec[];
  any_of?: FilterSpec[];
  not?: FilterSpec;
} & { [field: string]: ConditionSpec | FilterSpec | FilterSpec[] | undefined };

/** Similarity metric; see common.proto for what each similarity means. */
export type Metric = 'cosine' | 'l2' | 'ip';

/** How a search runs; `auto` lets the server's planner choose, which is always safe. */
export type SearchMode = 'auto' | 'exact' | 'hnsw';

/** What the server does with text over the model's token limit: fail, or cut it. */
export type TruncationPolicy = 'error' | 'truncate';
/** How a rerank orders its candidates: the reranker's scores alone, or fused with the similarities. */
export type RerankFusion = 'none' | 'rrf' | 'blend';
/** How a hybrid search fuses its vector and keyword (BM25) results. */
export type HybridFusion = 'rrf' | 'blend';

/** Hybrid search fusion; unset fields take the server's defaults. */
export interface HybridOptions {
  /** 'blend' (default): min-max normalized scores, weighted; 'rrf': reciprocal rank fusion. */
  fusion?: HybridFusion;
  /** RRF's k; 0 or unset: 60. */
  rrfK?: number;
  /** blend: the vector side's share, 0 to 1 (default 0.5). */
  vectorWeight?: number;
  /** Candidates per side before fusing; 0 or unset: max(k, 100). */
  candidates?: number;
}

export interface KeywordIndexCreated {
  /** False: the store had a keyword index on these fields already. */
  created: boolean;
  /** Entries in the index (those with text in its fields). */
  indexed: number;
}

/** How GetSimN combines positive and negative examples (see ExploreOptions). */
export type RecommendStrategy = 'average_vector' | 'best_score';

/**
 * More ways to ask GetSimN, on nachbar-db and nachbar-ai alike: MMR diversity and recommend by
 * example entries (ids of stored entries; with them the query may be null).
 */
export interface ExploreOptions {
  /** Maximal marginal relevance lambda in [0, 1]: 1 is a plain search, 0 the most diverse. */
  mmr?: number;
  /** The pool MMR picks from; 0 or unset: max(4k, 20), at most 1000. */
  mmrCandidates?: number;
  /** Ids of stored entries the results should resemble (at most 64 examples in all). */
  positive?: string[];
  /** Ids of stored entries the results should not resemble. */
  negative?: string[];
  /** Default 'average_vector'. */
  strategy?: RecommendStrategy;
  /** best_score's pool per positive; 0 or unset: max(4k, 20), at most 1000. */
  recommendCandidates?: number;
}

/** HNSW index parameters; an unset or zero field takes the server default. */
export interface HnswIndex {
  kind: 'hnsw';
  m?: number;
  efConstruction?: number;
  efSearch?: number;
}

/** Brute-force search over every vector: exact, no index to build. */
export interface ExactIndex {
  kind: 'exact';
}

export type IndexConfig = HnswIndex | ExactIndex;

/** Options every call takes. */
export interface CallOptions {
  /** Deadline for this call in milliseconds; defaults to the client's `timeoutMs`. */
  timeoutMs?: number;
  /** Cancels the call; it then rejects with `CancelledError`. */
  signal?: AbortSignal;
}

export interface StoreInfo {
  name: string;
  dimension: number;
  metric: Metric;
  /** The index with every default resolved. */
  index: IndexConfig;
  predicateIndexes: string[];
  count: number;
  bytesUsed: number;
  storeMetadata: Record<string, string>;
  /** Never reused: a store dropped and created again under its name gets a new id. */
  storeId: number;
  /** Metadata fields of the store's keyword index; unset when it has none. */
  keywordFields?: string[];
}

export interface CreateStoreResult<S> {
  store: S;
  /** False when `ifNotExists` found the store already there. */
  created: boolean;
}

export interface EntryInput {
  id: string;
  vector: ArrayLike<number>;
  metadata?: MetadataInput;
}

export interface Entry {
  id: string;
  metadata: Metadata;
  /** Present when the call asked for vectors. */
  vector?: number[];
  /** Present when `excludeMetadataKeys` or `maxMetadataValueBytes` left fields of this entry out. */
  omittedMetadataKeys?: string[];
}

export interface Match {
  id: string;
  /** Higher is more similar; its meaning per metric is documented on Metric. */
  similarity: number;
  metadata: Metadata;
  vector?: number[];
  /** As on Entry. */
  omittedMetadataKeys?: string[];
  /**
   * Hybrid and keyword-only searches: each side's own score (unset where that side did not
   * find the entry) and the fused score that ordered the results (= similarity).
   */
  vectorScore?: number;
  keywordScore?: number;
  hybridScore?: number;
}

export interface SearchResult<M> {
  /** Exactly min(k, number of matching entries), best first. */
  matches: M[];
  /** Which plan ran: "exact" or "hnsw". */
  plan: string;
}

export interface Page<E> {
  entries: E[];
  /** Pass as `pageToken` for the next page; empty on the last page. */
  nextPageToken: string;
}

export interface GetKeyResult<E> {
  /** In request order, without the missing ones. */
  entries: E[];
  missingIds: string[];
}

export interface UpsertResult {
  inserted: number;
  updated: number;
}

export interface DBInfo {
  version: string;
  storeCount: number;
  fsyncPolicy: string;
  maxMessageBytes: number;
  uptimeSeconds: number;
}

/** Something to embed: a string is text, bytes are an encoded image file. */
export type InputLike = string | Uint8Array | { text: string } | { image: Uint8Array };

/** A stored original as returned: text as a string, an image as its file bytes. */
export type Original = string | Buffer;

export interface AIStoreInfo {
  name: string;
  queryModel: string;
  indexModel: string;
  storeOriginal: boolean;
  /** The underlying db store: dimension, metric, index, count, predicate indexes, bytes. */
  dbStore: StoreInfo;
}

export interface AIUpsertEntry {
  /** Unset: derived from the input's content, so re-sending is idempotent. */
  id?: string;
  input: InputLike;
  /** Keys starting with "_nachbar" are reserved. */
  metadata?: MetadataInput;
}

export interface AIUpsertResult extends UpsertResult {
  /** The id of each entry, in request order. */
  ids: string[];
}

/** Rerank the vector hits with a cross-encoder; give `originalText` or `metadataField`. */
export interface RerankOptions {
  model: string;
  /** How many vector candidates to rerank; 0 or unset means max(k, 20). */
  candidates?: number;
  /** Read each candidate's text from its stored original (the store must keep originals). */
  originalText?: boolean;
  /** Read each candidate's text from this string metadata field. */
  metadataField?: string;
  /** Map cross-encoder logits to [0, 1]. */
  sigmoid?: boolean;
  /** Order by the reranker alone ('none', the default) or fused with the similarities. */
  fusion?: RerankFusion;
}

/** Rerank by a re-scorer trained for the store (AIClient.trainRescorer): it scores stored
 * vectors, so it needs no text and reranks image stores queried with text. */
export interface RescorerOptions {
  name: string;
  /** How many vector candidates to rerank; 0 or unset means max(k, 20). */
  candidates?: number;
  /** Order by the re-scorer alone ('none', the default) or fused with the similarities. */
  fusion?: RerankFusion;
}

/** One training example: a query and the ids of the store's entries that answer it. */
export interface TrainExample {
  query: InputLike;
  relevantIds: string[];
  /** Optional hard negatives. */
  irrelevantIds?: string[];
}

/** Zero or unset values take the server's defaults. */
export interface TrainSettings {
  epochs?: number;
  learningRate?: number;
  /** Share of the examples held out to measure the result (default 0.2). */
  heldOut?: number;
  seed?: number;
  /** Adapters: the weight pulling W toward the identity (default 0.01). */
  identityWeight?: number;
}

/** MRR@10 and recall@10 over the held-out examples. */
export interface TrainMetrics {
  mrrAt10: number;
  recallAt10: number;
  queries: number;
}

export type TrainState = 'queued' | 'training' | 'ready' | 'failed' | 'unspecified';

/** An adapter or re-scorer of a store. */
export interface TrainedInfo {
  store: string;
  name: string;
  state: TrainState;
  /** 0 to 1 while training. */
  progress: number;
  message: string;
  before: TrainMetrics;
  after: TrainMetrics;
  /** The held-out metric improved on the frozen baseline: use it only when true. */
  recommended: boolean;
  trainExamples: number;
  heldOutExamples: number;
  epochs: number;
  trainSeconds: number;
  dimension: number;
  space: string;
  corpusSize: number;
  weightBytes: number;
  createdAt: number;
}

export interface AIMatch {
  id: string;
  /** Vector similarity (see Metric). */
  similarity: number;
  /** The reranker's (or re-scorer's) score; set only when the search reranked. */
  rerankScore?: number;
  /** The fused score that ordered the matches; set only when the rerank fused. */
  fusedScore?: number;
  /** Hybrid and keyword-only searches, as on Match. */
  vectorScore?: number;
  keywordScore?: number;
  hybridScore?: number;
  metadata: Metadata;
  /** The stored original, when the store keeps originals. */
  original?: Original;
}

export interface AIEntry {
  id: string;
  metadata: Metadata;
  original?: Original;
}

export interface EmbedResult {
  embeddings: number[][];
  dimension: number;
}

export interface RerankResult {
  /** Index into the request's documents. */
  index: number;
  /** The reranker's relevance score; not a similarity. */
  score: number;
}

export type ModelKind = 'embedding' | 'cross_encoder' | 'late_interaction' | 'unspecified';
export type Modality = 'text' | 'image' | 'unspecified';

export interface ModelInfo {
  name: string;
  kind: ModelKind;
  modality: Modality;
  /** 0 for cross-encoders. */
  dimension: number;
  /** Models of one space may index and query the same store. */
  space: string;
  maxTokens: number;
  imageSize: number;
  /** A hub repo ("org/name@revision") or "built offline". */
  source: string;
  /** The files are present and can load without a download. */
  available: boolean;
  loaded: boolean;
  /** "fp32" or "int8". */
  precision: string;
  description: string;
}

export interface AIInfo {
  version: string;
  loadedModels: string[];
  dbAddress: string;
  dbReachable: boolean;
  maxMessageBytes: number;
}
