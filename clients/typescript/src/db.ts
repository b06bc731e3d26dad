// DBClient: every RPC of nachbar.db.v1.DBService as a promise-returning method.

import { Caller, type ClientOptions } from './call';
import { DEFAULTS } from './defaults';
import { InternalError, InvalidArgumentError } from './errors';
import type { Entry__Output } from './generated/nachbar/db/v1/Entry';
import type { StoreInfo__Output } from './generated/nachbar/db/v1/StoreInfo';
import type { DBServiceDefinition } from './generated/nachbar/db/v1/DBService';
import { dbService } from './protos';
import type {
  CallOptions,
  CreateStoreResult,
  DBInfo,
  Entry,
  EntryInput,
  ExploreOptions,
  FilterSpec,
  GetKeyResult,
  HybridOptions,
  IndexConfig,
  KeywordIndexCreated,
  Match,
  Metric,
  Page,
  SearchMode,
  SearchResult,
  StoreInfo,
  UpsertResult,
} from './types';
import {
  exploreToProto,
  filterToProto,
  hybridToProto,
  indexFromProto,
  indexToProto,
  metadataFromProto,
  metadataToProto,
  metricFromProto,
  metricToProto,
  optionalFilter,
  optionalScore,
  searchModeToProto,
  uint32,
  uint64,
  vectorToProto,
} from './values';

export const DEFAULT_DB_ADDRESS = `${DEFAULTS.host}:${DEFAULTS.db_port}`;
/** Entries per Upsert request; each request is atomic on the server. */
export const UPSERT_BATCH = DEFAULTS.db_upsert_batch;

export interface CreateStoreOptions extends CallOptions {
  /** Default cosine. */
  metric?: Metric;
  /** Default HNSW with the server's parameters. */
  index?: IndexConfig;
  predicateIndexes?: string[];
  storeMetadata?: Record<string, string>;
  /** Succeed without change when a store of that name, dimension and metric exists. */
  ifNotExists?: boolean;
  /** Give the store a keyword (BM25) index over these metadata text fields. */
  keywordFields?: string[];
}

export interface MissingOkOptions extends CallOptions {
  /** Succeed (returning false or 0) when there is nothing to drop. */
  missingOk?: boolean;
}

export interface UpsertOptions extends CallOptions {
  /** Entries per request (default 1000); each request is atomic, the whole call is not. */
  batchSize?: number;
}

export interface IncludeVectorsOptions extends CallOptions {
  includeVectors?: boolean;
}

/**
 * What a read returns of each entry's metadata. Entries of a store that keeps large values
 * (nachbar-ai keeps originals under `_nachbar_text` / `_nachbar_image`) can leave them out.
 */
export interface ReadOptions extends IncludeVectorsOptions {
  /** Default true; false returns no metadata. */
  includeMetadata?: boolean;
  /** Leave these metadata fields out; each entry's `omittedMetadataKeys` names what it lost. */
  excludeMetadataKeys?: string[];
  /** Leave out string, bytes and string-list values larger than this many bytes; 0 or unset: no limit. */
  maxMetadataValueBytes?: number;
}

export interface GetByPredicateOptions extends ReadOptions {
  /** Unset matches every entry. */
  filter?: FilterSpec;
  /** Page size: default 100, at most 10000. */
  limit?: number;
  /** A previous page's `nextPageToken`. */
  pageToken?: string;
}

export interface DBSearchOptions extends ReadOptions, ExploreOptions {
  filter?: FilterSpec;
  mode?: SearchMode;
  /** HNSW ef for this query; 0 or unset uses the store's ef_search. */
  ef?: number;
  /**
   * Hybrid search: these words on the store's keyword index too, fused with the vector
   * results; with a null query, keyword-only.
   */
  keywords?: string;
  hybrid?: HybridOptions;
}

export function storeInfoFromProto(info: StoreInfo__Output | null): StoreInfo {
  if (info === null) {
    throw new InternalError('the server sent no store info; is it a nachbar server of a compatible version?');
  }
  return {
    name: info.name,
    dimension: info.dimension,
    metric: metricFromProto(info.metric),
    index: indexFromProto(info.index),
    predicateIndexes: [...info.predicate_indexes],
    count: uint64(info.count),
    bytesUsed: uint64(info.bytes_used),
    storeMetadata: { ...info.store_metadata },
    storeId: uint64(info.store_id),
    ...(info.keyword_index ? { keywordFields: [...info.keyword_index.fields] } : {}),
  };
}

function entryFromProto(entry: Entry__Output, withVector: boolean): Entry {
  const result: Entry = { id: entry.id, metadata: metadataFromProto(entry.metadata) };
  if (withVector) result.vector = [...entry.vector];
  if (entry.omitted_metadata_keys.length > 0) result.omittedMetadataKeys = [...entry.omitted_metadata_keys];
  return result;
}

/**
 * A client for nachbar-db, for callers that bring their own vectors.
 *
 * Every method takes `{timeoutMs, signal}` last and rejects with a `NachbarError` subclass
 * (`NotFoundError`, `InvalidArgumentError`, ...). Call `close()` when done.
 */
export class DBClient {
  private readonly caller: Caller;
  private readonly service: DBServiceDefinition;

  /** `address`: one server, several replicas ("ip1:port,ip2:port" or an array) or a dns:/// target. */
  constructor(address: string | readonly string[] = DEFAULT_DB_ADDRESS, options: ClientOptions = {}) {
    this.caller = new Caller(address, options, 'nachbar.db.v1.DBService');
    this.service = dbService();
  }

  get address(): string {
    return this.caller.address;
  }

  close(): void {
    this.caller.close();
  }

  /** Resolves once connected; rejects with `UnavailableError` when the deadline passes. */
  waitForReady(timeoutMs?: number): Promise<void> {
    return this.caller.waitForReady(timeoutMs);
  }

  async createStore(store: string, dimension: number, options: CreateStoreOptions = {}): Promise<CreateStoreResult<StoreInfo>> {
    const response = await this.caller.unary(
      this.service.CreateStore,
      {
        store,
        dimension: uint32(dimension, 'dimension'),
        metric: metricToProto(options.metric),
        index: indexToProto(options.index),
        predicate_indexes: options.predicateIndexes ?? [],
        store_metadata: options.storeMetadata ?? {},
        if_not_exists: options.ifNotExists ?? false,
        keyword_index: options.keywordFields ? { fields: options.keywordFields } : undefined,
      },
      options,
    );
    return { store: storeInfoFromProto(response.store), created: response.created };
  }

  /** True when a store was dropped; false only with `missingOk` and no such store. */
  async dropStore(store: string, options: MissingOkOptions = {}): Promise<boolean> {
    const response = await this.caller.unary(this.service.DropStore, { store, missing_ok: options.missingOk ?? false }, options);
    return response.dropped;
  }

  async listStores(options: CallOptions = {}): Promise<StoreInfo[]> {
    const response = await this.caller.unary(this.service.ListStores, {}, options);
    return response.stores.map(storeInfoFromProto);
  }

  async getStore(store: string, options: CallOptions = {}): Promise<StoreInfo> {
    const response = await this.caller.unary(this.service.GetStore, { store }, options);
    return storeInfoFromProto(response.store);
  }

  /** Insert or replace entries by id, `batchSize` entries per atomic request. */
  async upsert(store: string, entries: Iterable<EntryInput>, options: UpsertOptions = {}): Promise<UpsertResult> {
    const batchSize = options.batchSize ?? UPSERT_BATCH;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new InvalidArgumentError(`batchSize must be a positive integer, got ${String(batchSize)}`);
    }
    const total: UpsertResult = { inserted: 0, updated: 0 };
    let batch: EntryInput[] = [];
    const send = async (): Promise<void> => {
      const response = await this.caller.unary(
        this.service.Upsert,
        {
          store,
          entries: batch.map((entry, i) => ({
            id: entry.id,
            vector: vectorToProto(entry.vector, `entries[${i}].vector`),
            metadata: metadataToProto(entry.metadata),
          })),
        },
        options,
      );
      total.inserted += uint64(response.inserted);
      total.updated += uint64(response.updated);
      batch = [];
    };
    for (const entry of entries) {
      batch.push(entry);
      if (batch.length >= batchSize) await send();
    }
    if (batch.length > 0) await send();
    return total;
  }

  /**
   * Entries by id, in request order, and the ids not found. When the entries do not fit into
   * one response they come in several (each with its own deadline).
   */
  async getKey(store: string, ids: string[], options: ReadOptions = {}): Promise<GetKeyResult<Entry>> {
    const includeVectors = options.includeVectors ?? false;
    const entries: Entry[] = [];
    const missingIds: string[] = [];
    let pending = ids;
    for (;;) {
      const response = await this.caller.unary(
        this.service.GetKey,
        { store, ids: pending, include_vectors: includeVectors, allow_partial: true, ...this.readFields(options) },
        options,
      );
      entries.push(...response.entries.map((entry) => entryFromProto(entry, includeVectors)));
      missingIds.push(...response.missing_ids);
      if (response.unreturned_ids.length === 0) return { entries, missingIds };
      pending = [...response.unreturned_ids];
    }
  }

  /** One page of the entries matching `filter`, in id order. */
  async getByPredicate(store: string, options: GetByPredicateOptions = {}): Promise<Page<Entry>> {
    const includeVectors = options.includeVectors ?? false;
    const response = await this.caller.unary(
      this.service.GetByPredicate,
      {
        store,
        filter: optionalFilter(options.filter),
        limit: uint32(options.limit ?? DEFAULTS.page_limit, 'limit'),
        page_token: options.pageToken ?? '',
        include_vectors: includeVectors,
        ...this.readFields(options),
      },
      options,
    );
    return {
      entries: response.entries.map((entry) => entryFromProto(entry, includeVectors)),
      nextPageToken: response.next_page_token,
    };
  }

  /**
   * The `k` entries most similar to `query`, best first, optionally among those matching a
   * filter. With `keywords` a hybrid search; with a null query and `keywords`, keyword-only.
   * `mmr` diversifies them; `positive` and `negative` ids recommend by stored examples (then
   * `query` may be null).
   */
  async getSimN(store: string, query: ArrayLike<number> | null, k: number, options: DBSearchOptions = {}): Promise<SearchResult<Match>> {
    const includeVectors = options.includeVectors ?? false;
    const response = await this.caller.unary(
      this.service.GetSimN,
      {
        store,
        query: query === null ? [] : vectorToProto(query, 'query'),
        ...exploreToProto(options),
        k: uint32(k, 'k'),
        filter: optionalFilter(options.filter),
        mode: searchModeToProto(options.mode),
        ef: uint32(options.ef ?? 0, 'ef'),
        include_vectors: includeVectors,
        keywords: options.keywords ?? '',
        hybrid: hybridToProto(options.hybrid),
        ...this.readFields(options),
      },
      options,
    );
    return {
      matches: response.matches.map((match) => {
        const result: Match = { id: match.id, similarity: match.similarity, metadata: metadataFromProto(match.metadata) };
        if (includeVectors) result.vector = [...match.vector];
        if (match.omitted_metadata_keys.length > 0) result.omittedMetadataKeys = [...match.omitted_metadata_keys];
        const vectorScore = optionalScore(match._vector_score, match.vector_score);
        const keywordScore = optionalScore(match._keyword_score, match.keyword_score);
        const hybridScore = optionalScore(match._hybrid_score, match.hybrid_score);
        if (vectorScore !== undefined) result.vectorScore = vectorScore;
        if (keywordScore !== undefined) result.keywordScore = keywordScore;
        if (hybridScore !== undefined) result.hybridScore = hybridScore;
        return result;
      }),
      plan: response.plan,
    };
  }

  /** The request fields of ReadOptions; the server never sends more than this channel accepts. */
  private readFields(options: ReadOptions): {
    include_metadata?: boolean;
    exclude_metadata_keys: string[];
    max_metadata_value_bytes: number;
    max_response_bytes: number;
  } {
    const maxValueBytes = options.maxMetadataValueBytes ?? 0;
    if (!Number.isSafeInteger(maxValueBytes) || maxValueBytes < 0) {
      throw new InvalidArgumentError(`maxMetadataValueBytes must be a non-negative integer, got ${String(maxValueBytes)}`);
    }
    const fields = {
      exclude_metadata_keys: options.excludeMetadataKeys ?? [],
      max_metadata_value_bytes: maxValueBytes,
      max_response_bytes: this.caller.maxReceiveBytes,
    };
    return options.includeMetadata === false ? { include_metadata: false, ...fields } : fields;
  }

  /** How many of `ids` existed and were deleted. */
  async deleteKeys(store: string, ids: string[], options: CallOptions = {}): Promise<number> {
    const response = await this.caller.unary(this.service.DeleteKeys, { store, ids }, options);
    return uint64(response.deleted);
  }

  /** Delete every entry matching `filter` (required: dropping everything is `dropStore`). */
  async deleteByPredicate(store: string, filter: FilterSpec, options: CallOptions = {}): Promise<number> {
    const response = await this.caller.unary(this.service.DeleteByPredicate, { store, filter: filterToProto(filter) }, options);
    return uint64(response.deleted);
  }

  /** Index metadata fields for faster filters; returns how many were not indexed before. */
  async createPredIndex(store: string, fields: string[], options: CallOptions = {}): Promise<number> {
    const response = await this.caller.unary(this.service.CreatePredIndex, { store, fields }, options);
    return response.created;
  }

  async dropPredIndex(store: string, fields: string[], options: MissingOkOptions = {}): Promise<number> {
    const response = await this.caller.unary(
      this.service.DropPredIndex,
      { store, fields, missing_ok: options.missingOk ?? false },
      options,
    );
    return response.dropped;
  }

  /** A keyword (BM25) index over these metadata text fields, filled from the entries already there. */
  async createKeywordIndex(store: string, fields: string[], options: CallOptions = {}): Promise<KeywordIndexCreated> {
    const response = await this.caller.unary(this.service.CreateKeywordIndex, { store, index: { fields } }, options);
    return { created: response.created, indexed: uint64(response.indexed) };
  }

  async dropKeywordIndex(store: string, options: MissingOkOptions = {}): Promise<boolean> {
    const response = await this.caller.unary(this.service.DropKeywordIndex, { store, missing_ok: options.missingOk ?? false }, options);
    return response.dropped;
  }

  async info(options: CallOptions = {}): Promise<DBInfo> {
    const response = await this.caller.unary(this.service.Info, {}, options);
    return {
      version: response.version,
      storeCount: response.store_count,
      fsyncPolicy: response.fsync_policy,
      maxMessageBytes: uint64(response.max_message_bytes),
      uptimeSeconds: response.uptime_seconds,
    };
  }

  async ping(options: CallOptions = {}): Promise<void> {
    await this.caller.unary(this.service.Ping, {}, options);
  }
}
