// AIClient: every RPC of nachbar.ai.v1.AIService as a promise-returning method.

import { readFile } from 'node:fs/promises';
import { Caller, type ClientOptions } from './call';
import { storeInfoFromProto } from './db';
import { DEFAULTS } from './defaults';
import { InternalError, InvalidArgumentError } from './errors';
import type { AIEntry__Output } from './generated/nachbar/ai/v1/AIEntry';
import type { AIServiceDefinition } from './generated/nachbar/ai/v1/AIService';
import type { AIStoreInfo__Output } from './generated/nachbar/ai/v1/AIStoreInfo';
import type { Input, Input__Output } from './generated/nachbar/ai/v1/Input';
import type { ModelInfo__Output } from './generated/nachbar/ai/v1/ModelInfo';
import type { RerankOptions as RerankOptionsMessage } from './generated/nachbar/ai/v1/RerankOptions';
import type { TrainExample as TrainExampleMessage } from './generated/nachbar/ai/v1/TrainExample';
import type { TrainMetrics__Output } from './generated/nachbar/ai/v1/TrainMetrics';
import type { TrainedInfo__Output } from './generated/nachbar/ai/v1/TrainedInfo';
import { aiService } from './protos';
import type {
  AIEntry,
  AIInfo,
  AIMatch,
  AIStoreInfo,
  AIUpsertEntry,
  AIUpsertResult,
  CallOptions,
  CreateStoreResult,
  EmbedResult,
  ExploreOptions,
  FilterSpec,
  GetKeyResult,
  HybridOptions,
  IndexConfig,
  InputLike,
  Metric,
  Modality,
  ModelInfo,
  ModelKind,
  Original,
  Page,
  RerankOptions,
  RerankResult,
  RescorerOptions,
  SearchMode,
  SearchResult,
  TrainExample,
  TrainMetrics,
  TrainSettings,
  TrainState,
  TrainedInfo,
  TruncationPolicy,
} from './types';
import {
  exploreToProto,
  filterToProto,
  indexToProto,
  metadataFromProto,
  metadataToProto,
  metricToProto,
  optionalFilter,
  hybridToProto,
  optionalScore,
  rerankFusionToProto,
  searchModeToProto,
  truncationToProto,
  uint32,
  uint64,
} from './values';

export const DEFAULT_AI_ADDRESS = `${DEFAULTS.host}:${DEFAULTS.ai_port}`;
/** Inputs per Upsert request: the server embeds each request as one batch. */
export const AI_UPSERT_BATCH = DEFAULTS.ai_upsert_batch;

export interface AICreateStoreOptions extends CallOptions {
  /** Embeds search queries. */
  queryModel: string;
  /** Embeds upserted inputs; must share the query model's embedding space. Default: queryModel. */
  indexModel?: string;
  /** Keep each input so it can be returned and reranked (default true). */
  storeOriginal?: boolean;
  predicateIndexes?: string[];
  index?: IndexConfig;
  /** Unset takes the models' recommended metric. */
  metric?: Metric;
  ifNotExists?: boolean;
  /** A keyword index for hybrid search: these metadata fields, or [] for the original text. */
  keywordIndex?: string[];
}

export interface TruncationOptions extends CallOptions {
  /** Text over the model's token limit: 'error' (default) or 'truncate'. */
  truncation?: TruncationPolicy;
}

export interface AIUpsertOptions extends TruncationOptions {
  /** Entries per request (default 64); each request is atomic, the whole call is not. */
  batchSize?: number;
}

export interface AISearchOptions extends TruncationOptions, ExploreOptions {
  filter?: FilterSpec;
  /** Unset: no reranking. */
  rerank?: RerankOptions;
  mode?: SearchMode;
  ef?: number;
  /** Embed the query with this model (of the store's space) instead of the store's. */
  queryModelOverride?: string;
  /**
   * Hybrid search (the store needs a keyword index): set `hybrid`, `keywords` or `keywordOnly`.
   * The keyword side searches `keywords`, else the query text (image queries need keywords).
   */
  hybrid?: HybridOptions;
  keywords?: string;
  /** Search by keywords alone (BM25), without embedding the query. */
  keywordOnly?: boolean;
  /** Search with the query vector mapped by this adapter of the store (trainAdapter). */
  adapter?: string;
  /** Rerank by a re-scorer of the store instead of `rerank`. */
  rescorer?: RescorerOptions;
}

export interface MissingOkCallOptions extends CallOptions {
  missingOk?: boolean;
}

export interface TrainCallOptions extends CallOptions {
  settings?: TrainSettings;
}

export interface AIGetByPredicateOptions extends CallOptions {
  filter?: FilterSpec;
  limit?: number;
  pageToken?: string;
}

export interface RerankCallOptions extends TruncationOptions {
  /** How many results; 0 or unset returns all. */
  topK?: number;
  sigmoid?: boolean;
}

/** Reads an image file for use as an input: `ai.embed(model, [await imageFile('cat.jpg')])`. */
export async function imageFile(path: string): Promise<{ image: Buffer }> {
  return { image: await readFile(path) };
}

export function inputToProto(input: InputLike, what = 'input'): Input {
  if (typeof input === 'string') return { text: input };
  if (input instanceof Uint8Array) return { image: input };
  if (typeof input === 'object' && input !== null) {
    if ('text' in input && typeof input.text === 'string') return { text: input.text };
    if ('image' in input && input.image instanceof Uint8Array) return { image: input.image };
  }
  throw new InvalidArgumentError(
    `${what} must be a string (text), a Uint8Array/Buffer (image file bytes), {text} or {image}; ` +
      'use imageFile(path) to read an image from disk',
  );
}

function originalFromProto(input: Input__Output | null | undefined): Original | undefined {
  if (input?.kind === 'text') return input.text ?? '';
  if (input?.kind === 'image') return input.image ?? Buffer.alloc(0);
  return undefined;
}

function aiStoreFromProto(info: AIStoreInfo__Output | null): AIStoreInfo {
  if (info === null) {
    throw new InternalError('the server sent no store info; is it a nachbar server of a compatible version?');
  }
  return {
    name: info.name,
    queryModel: info.query_model,
    indexModel: info.index_model,
    storeOriginal: info.store_original,
    dbStore: storeInfoFromProto(info.db_store),
  };
}

function aiEntryFromProto(entry: AIEntry__Output): AIEntry {
  const result: AIEntry = { id: entry.id, metadata: metadataFromProto(entry.metadata) };
  const original = originalFromProto(entry.original);
  if (original !== undefined) result.original = original;
  return result;
}

function rerankToProto(rerank: RerankOptions | undefined): RerankOptionsMessage | null {
  if (rerank === undefined) return null;
  const message: RerankOptionsMessage = {
    model: rerank.model,
    candidates: uint32(rerank.candidates ?? 0, 'rerank.candidates'),
    sigmoid: rerank.sigmoid ?? false,
    fusion: rerankFusionToProto(rerank.fusion),
  };
  if (rerank.originalText && rerank.metadataField !== undefined) {
    throw new InvalidArgumentError('rerank takes originalText or metadataField, not both');
  }
  if (rerank.metadataField !== undefined) {
    message.metadata_field = rerank.metadataField;
  } else if (rerank.originalText) {
    message.original_text = true;
  } else {
    throw new InvalidArgumentError(
      'rerank needs the documents\' text: set originalText: true (the store keeps originals) or metadataField',
    );
  }
  return message;
}

function searchRerankToProto(options: AISearchOptions): RerankOptionsMessage | null {
  if (options.rescorer === undefined) return rerankToProto(options.rerank);
  if (options.rerank !== undefined) {
    throw new InvalidArgumentError('give rerank (a model) or rescorer, not both');
  }
  return {
    rescorer: options.rescorer.name,
    candidates: uint32(options.rescorer.candidates ?? 0, 'rescorer.candidates'),
    fusion: rerankFusionToProto(options.rescorer.fusion),
  };
}

function trainExampleToProto(example: TrainExample, i: number): TrainExampleMessage {
  return {
    query: inputToProto(example.query, `examples[${i}].query`),
    relevant_ids: example.relevantIds,
    irrelevant_ids: example.irrelevantIds ?? [],
  };
}

function metricsFromProto(metrics: TrainMetrics__Output | null): TrainMetrics {
  return {
    mrrAt10: metrics?.mrr_at_10 ?? 0,
    recallAt10: metrics?.recall_at_10 ?? 0,
    queries: metrics?.queries ?? 0,
  };
}

function trainedFromProto(info: TrainedInfo__Output | null): TrainedInfo {
  if (info === null) throw new InternalError('the response has no adapter or re-scorer');
  return {
    store: info.store,
    name: info.name,
    state: info.state.replace(/^TRAIN_STATE_/, '').toLowerCase() as TrainState,
    progress: info.progress,
    message: info.message,
    before: metricsFromProto(info.before),
    after: metricsFromProto(info.after),
    recommended: info.recommended,
    trainExamples: info.train_examples,
    heldOutExamples: info.held_out_examples,
    epochs: info.epochs,
    trainSeconds: info.train_seconds,
    dimension: info.dimension,
    space: info.space,
    corpusSize: uint64(info.corpus_size),
    weightBytes: uint64(info.weight_bytes),
    createdAt: info.created_at,
  };
}

function trainRequest(store: string, name: string, examples: TrainExample[], settings: TrainSettings = {}) {
  return {
    store,
    name,
    examples: examples.map(trainExampleToProto),
    options: {
      epochs: uint32(settings.epochs ?? 0, 'epochs'),
      learning_rate: settings.learningRate ?? 0,
      held_out: settings.heldOut ?? 0,
      seed: uint32(settings.seed ?? 0, 'seed'),
      identity_weight: settings.identityWeight ?? 0,
    },
  };
}

function modelFromProto(model: ModelInfo__Output): ModelInfo {
  const kind = model.kind.replace(/^MODEL_KIND_/, '').toLowerCase() as ModelKind;
  const modality = model.modality.replace(/^MODALITY_/, '').toLowerCase() as Modality;
  return {
    name: model.name,
    kind,
    modality,
    dimension: model.dimension,
    space: model.space,
    maxTokens: model.max_tokens,
    imageSize: model.image_size,
    source: model.source,
    available: model.available,
    loaded: model.loaded,
    precision: model.precision,
    description: model.description,
  };
}

/**
 * A client for nachbar-ai: stores of text and images, embedding and reranking.
 *
 * Inputs are strings (text) or bytes (encoded image files; see `imageFile`). Every method takes
 * `{timeoutMs, signal}` last and rejects with a `NachbarError` subclass. Call `close()` when done.
 */
export class AIClient {
  private readonly caller: Caller;
  private readonly service: AIServiceDefinition;

  /** `address`: one server, several replicas ("ip1:port,ip2:port" or an array) or a dns:/// target. */
  constructor(address: string | readonly string[] = DEFAULT_AI_ADDRESS, options: ClientOptions = {}) {
    this.caller = new Caller(address, options, 'nachbar.ai.v1.AIService');
    this.service = aiService();
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

  async createStore(store: string, options: AICreateStoreOptions): Promise<CreateStoreResult<AIStoreInfo>> {
    const response = await this.caller.unary(
      this.service.CreateStore,
      {
        store,
        query_model: options.queryModel,
        index_model: options.indexModel || options.queryModel,
        store_original: options.storeOriginal ?? DEFAULTS.store_original,
        predicate_indexes: options.predicateIndexes ?? [],
        index: indexToProto(options.index),
        metric: metricToProto(options.metric),
        if_not_exists: options.ifNotExists ?? false,
        keyword_index: options.keywordIndex ? { fields: options.keywordIndex } : undefined,
      },
      options,
    );
    return { store: aiStoreFromProto(response.store), created: response.created };
  }

  async dropStore(store: string, options: CallOptions & { missingOk?: boolean } = {}): Promise<boolean> {
    const response = await this.caller.unary(this.service.DropStore, { store, missing_ok: options.missingOk ?? false }, options);
    return response.dropped;
  }

  /** Stores created through nachbar-ai (plain db stores are left out). */
  async listStores(options: CallOptions = {}): Promise<AIStoreInfo[]> {
    const response = await this.caller.unary(this.service.ListStores, {}, options);
    return response.stores.map(aiStoreFromProto);
  }

  async getStore(store: string, options: CallOptions = {}): Promise<AIStoreInfo> {
    const response = await this.caller.unary(this.service.GetStore, { store }, options);
    return aiStoreFromProto(response.store);
  }

  /** Embed inputs with the store's index model and upsert them, `batchSize` per request. */
  async upsert(store: string, entries: Iterable<AIUpsertEntry>, options: AIUpsertOptions = {}): Promise<AIUpsertResult> {
    const batchSize = options.batchSize ?? AI_UPSERT_BATCH;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new InvalidArgumentError(`batchSize must be a positive integer, got ${String(batchSize)}`);
    }
    const truncation = truncationToProto(options.truncation);
    const total: AIUpsertResult = { inserted: 0, updated: 0, ids: [] };
    let batch: AIUpsertEntry[] = [];
    const send = async (): Promise<void> => {
      const offset = total.ids.length;
      const response = await this.caller.unary(
        this.service.Upsert,
        {
          store,
          entries: batch.map((entry, i) => ({
            id: entry.id ?? '',
            input: inputToProto(entry.input, `entries[${offset + i}].input`),
            metadata: metadataToProto(entry.metadata),
          })),
          truncation,
        },
        options,
      );
      total.inserted += uint64(response.inserted);
      total.updated += uint64(response.updated);
      total.ids.push(...response.ids);
      batch = [];
    };
    for (const entry of entries) {
      batch.push(entry);
      if (batch.length >= batchSize) await send();
    }
    if (batch.length > 0) await send();
    return total;
  }

  /** Embed `query` with the store's query model and return the `k` best matches. */
  /**
   * The k entries most similar to `query`. `mmr` diversifies them (not with `rerank`); `positive`
   * and `negative` ids of stored entries recommend by examples (then `query` may be null).
   */
  async getSimN(store: string, query: InputLike | null, k: number, options: AISearchOptions = {}): Promise<SearchResult<AIMatch>> {
    const response = await this.caller.unary(
      this.service.GetSimN,
      {
        store,
        query: query === null ? null : inputToProto(query, 'query'),
        ...exploreToProto(options),
        k: uint32(k, 'k'),
        filter: optionalFilter(options.filter),
        truncation: truncationToProto(options.truncation),
        rerank: searchRerankToProto(options),
        mode: searchModeToProto(options.mode),
        ef: uint32(options.ef ?? 0, 'ef'),
        query_model_override: options.queryModelOverride ?? '',
        hybrid: hybridToProto(options.hybrid),
        keywords: options.keywords ?? '',
        keyword_only: options.keywordOnly ?? false,
        adapter: options.adapter ?? '',
      },
      options,
    );
    return {
      matches: response.matches.map((match) => {
        const result: AIMatch = { id: match.id, similarity: match.similarity, metadata: metadataFromProto(match.metadata) };
        if (match._rerank_score === 'rerank_score' && match.rerank_score !== undefined) result.rerankScore = match.rerank_score;
        if (match._fused_score === 'fused_score' && match.fused_score !== undefined) result.fusedScore = match.fused_score;
        const vectorScore = optionalScore(match._vector_score, match.vector_score);
        const keywordScore = optionalScore(match._keyword_score, match.keyword_score);
        const hybridScore = optionalScore(match._hybrid_score, match.hybrid_score);
        if (vectorScore !== undefined) result.vectorScore = vectorScore;
        if (keywordScore !== undefined) result.keywordScore = keywordScore;
        if (hybridScore !== undefined) result.hybridScore = hybridScore;
        const original = originalFromProto(match.original);
        if (original !== undefined) result.original = original;
        return result;
      }),
      plan: response.plan,
    };
  }

  async getKey(store: string, ids: string[], options: CallOptions = {}): Promise<GetKeyResult<AIEntry>> {
    const response = await this.caller.unary(this.service.GetKey, { store, ids }, options);
    return { entries: response.entries.map(aiEntryFromProto), missingIds: [...response.missing_ids] };
  }

  async getByPredicate(store: string, options: AIGetByPredicateOptions = {}): Promise<Page<AIEntry>> {
    const response = await this.caller.unary(
      this.service.GetByPredicate,
      {
        store,
        filter: optionalFilter(options.filter),
        limit: uint32(options.limit ?? DEFAULTS.page_limit, 'limit'),
        page_token: options.pageToken ?? '',
      },
      options,
    );
    return { entries: response.entries.map(aiEntryFromProto), nextPageToken: response.next_page_token };
  }

  async deleteKeys(store: string, ids: string[], options: CallOptions = {}): Promise<number> {
    const response = await this.caller.unary(this.service.DeleteKeys, { store, ids }, options);
    return uint64(response.deleted);
  }

  async deleteByPredicate(store: string, filter: FilterSpec, options: CallOptions = {}): Promise<number> {
    const response = await this.caller.unary(this.service.DeleteByPredicate, { store, filter: filterToProto(filter) }, options);
    return uint64(response.deleted);
  }

  /** Vectors for `inputs` from `model`, in order; no store involved. */
  async embed(model: string, inputs: InputLike[], options: TruncationOptions = {}): Promise<EmbedResult> {
    const response = await this.caller.unary(
      this.service.Embed,
      {
        model,
        inputs: inputs.map((input, i) => inputToProto(input, `inputs[${i}]`)),
        truncation: truncationToProto(options.truncation),
      },
      options,
    );
    return { embeddings: response.embeddings.map((embedding) => [...embedding.values]), dimension: response.dimension };
  }

  /** Score each document against `query` with a cross-encoder; best first. */
  async rerank(model: string, query: string, documents: string[], options: RerankCallOptions = {}): Promise<RerankResult[]> {
    const response = await this.caller.unary(
      this.service.Rerank,
      {
        model,
        query,
        documents,
        top_k: uint32(options.topK ?? 0, 'topK'),
        truncation: truncationToProto(options.truncation),
        sigmoid: options.sigmoid ?? false,
      },
      options,
    );
    return response.results.map((result) => ({ index: result.index, score: result.score }));
  }

  async listModels(options: CallOptions = {}): Promise<ModelInfo[]> {
    const response = await this.caller.unary(this.service.ListModels, {}, options);
    return response.models.map(modelFromProto);
  }

  async info(options: CallOptions = {}): Promise<AIInfo> {
    const response = await this.caller.unary(this.service.Info, {}, options);
    return {
      version: response.version,
      loadedModels: [...response.loaded_models],
      dbAddress: response.db_address,
      dbReachable: response.db_reachable,
      maxMessageBytes: uint64(response.max_message_bytes),
    };
  }

  async ping(options: CallOptions = {}): Promise<void> {
    await this.caller.unary(this.service.Ping, {}, options);
  }

  /** Start training a query adapter in the background; `getAdapter` shows its state. */
  async trainAdapter(store: string, name: string, examples: TrainExample[], options: TrainCallOptions = {}): Promise<TrainedInfo> {
    const response = await this.caller.unary(this.service.TrainAdapter, trainRequest(store, name, examples, options.settings), options);
    return trainedFromProto(response.adapter);
  }

  async getAdapter(store: string, name: string, options: CallOptions = {}): Promise<TrainedInfo> {
    const response = await this.caller.unary(this.service.GetAdapter, { store, name }, options);
    return trainedFromProto(response.adapter);
  }

  async listAdapters(store: string, options: CallOptions = {}): Promise<TrainedInfo[]> {
    const response = await this.caller.unary(this.service.ListAdapters, { store }, options);
    return response.adapters.map(trainedFromProto);
  }

  async dropAdapter(store: string, name: string, options: MissingOkCallOptions = {}): Promise<boolean> {
    const response = await this.caller.unary(
      this.service.DropAdapter,
      { store, name, missing_ok: options.missingOk ?? false },
      options,
    );
    return response.dropped;
  }

  /** Start training a re-scorer in the background; `getRescorer` shows its state. */
  async trainRescorer(store: string, name: string, examples: TrainExample[], options: TrainCallOptions = {}): Promise<TrainedInfo> {
    const response = await this.caller.unary(this.service.TrainRescorer, trainRequest(store, name, examples, options.settings), options);
    return trainedFromProto(response.rescorer);
  }

  async getRescorer(store: string, name: string, options: CallOptions = {}): Promise<TrainedInfo> {
    const response = await this.caller.unary(this.service.GetRescorer, { store, name }, options);
    return trainedFromProto(response.rescorer);
  }

  async listRescorers(store: string, options: CallOptions = {}): Promise<TrainedInfo[]> {
    const response = await this.caller.unary(this.service.ListRescorers, { store }, options);
    return response.rescorers.map(trainedFromProto);
  }

  async dropRescorer(store: string, name: string, options: MissingOkCallOptions = {}): Promise<boolean> {
    const response = await this.caller.unary(
      this.service.DropRescorer,
      { store, name, missing_ok: options.missingOk ?? false },
      options,
    );
    return response.dropped;
  }
}
