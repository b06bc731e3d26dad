// One channel per client and one way to run a unary call: with a deadline, cancellable, and
// failing with a typed NachbarError.

import * as grpc from '@grpc/grpc-js';
import { DEFAULTS } from './defaults';
import { CancelledError, InvalidArgumentError, errorFromStatus } from './errors';
import type { CallOptions } from './types';

export const DEFAULT_TIMEOUT_MS = DEFAULTS.timeout_seconds * 1000;
/** The servers' default --max-message-bytes; grpc-js alone would refuse replies over 4 MiB. */
export const MAX_MESSAGE_BYTES = DEFAULTS.max_message_bytes;

export interface ClientOptions {
  /** Deadline of every call unless the call sets its own; milliseconds, default 30 000. */
  timeoutMs?: number;
  /** Default: plaintext, as the servers listen. */
  credentials?: grpc.ChannelCredentials;
  /** Extra grpc-js channel options; they override the message size limits set here. */
  channelOptions?: grpc.ChannelOptions;
}

/** The parts of a proto-loader method definition a unary call needs. */
export interface UnaryMethod<Req, Res> {
  path: string;
  requestSerialize: (request: Req) => Buffer;
  responseDeserialize: (bytes: Buffer) => Res;
}

function checkTimeout(timeoutMs: number): number {
  if (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new InvalidArgumentError(`timeoutMs must be a positive number of milliseconds, got ${String(timeoutMs)}`);
  }
  return timeoutMs;
}

export class Caller {
  readonly client: grpc.Client;
  readonly timeoutMs: number;

  constructor(
    readonly address: string,
    options: ClientOptions,
  ) {
    this.timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.client = new grpc.Client(address, options.credentials ?? grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      ...options.channelOptions,
    });
  }

  unary<Req, Res>(method: UnaryMethod<Req, Res>, request: NoInfer<Req>, options: CallOptions = {}): Promise<Res> {
    const timeoutMs = checkTimeout(options.timeoutMs ?? this.timeoutMs);
    const { signal } = options;
    return new Promise<Res>((resolve, reject) => {
      if (signal?.aborted) {
        reject(new CancelledError(`${method.path} was cancelled before it started`, { method: method.path }));
        return;
      }
      const onAbort = (): void => call.cancel();
      const call = this.client.makeUnaryRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        request,
        new grpc.Metadata(),
        { deadline: Date.now() + timeoutMs },
        (error, response) => {
          signal?.removeEventListener('abort', onAbort);
          if (error) {
            reject(errorFromStatus(error, { method: method.path, address: this.address, cause: error }));
          } else {
            resolve(response as Res);
          }
        },
      );
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Resolves once the channel is connected; rejects with UnavailableError at the deadline. */
  waitForReady(timeoutMs: number = this.timeoutMs): Promise<void> {
    checkTimeout(timeoutMs);
    return new Promise<void>((resolve, reject) => {
      this.client.waitForReady(Date.now() + timeoutMs, (error) => {
        if (error) {
          reject(errorFromStatus({ code: grpc.status.UNAVAILABLE, details: error.message }, { address: this.address, cause: error }));
        } else {
          resolve();
        }
      });
    });
  }

  close(): void {
    this.client.close();
  }
}
