// AIClient against real nachbar-ai and nachbar-db processes with the built offline models.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AIClient, NachbarError, NotFoundError, imageFile } from '../src/index';
import { BIN_DIR, ServerProcess, startServer, tempDir } from './servers';

const MODEL_DIR = process.env['NACHBAR_TEST_MODEL_DIR'];
const TEXT_MODEL = 'all-minilm-l6-v2';
const CROSS_ENCODER = 'stsb-minilm-l6-cross-encoder';
const IMAGE_MODEL = 'imagenet-conse-minilm-l6';
const SKIP = MODEL_DIR
  ? false
  : 'NACHBAR_TEST_MODEL_DIR is unset: build the models with `nachbar models build --model-dir DIR` and set it to DIR';

/** Real photos that ship in the foolbox wheel, named by ImageNet class index; [] without it. */
function foolboxPhotos(): string[] {
  const script = [
    'import importlib.metadata as m',
    'd = m.distribution("foolbox")',
    'print("\\n".join(str(d.locate_file(f)) for f in d.files or [] if "data/imagenet_" in str(f)))',
  ].join('\n');
  try {
    return execFileSync(path.join(BIN_DIR, 'python'), ['-c', script], { encoding: 'utf8' }).split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

function cosine(a: number[], b: number[]): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  a.forEach((x, i) => {
    dot += x * b[i]!;
    na += x * x;
    nb += b[i]! * b[i]!;
  });
  return dot / Math.sqrt(na * nb);
}

async function rejection(promise: Promise<unknown>): Promise<NachbarError> {
  const error = await promise.then(
    () => assert.fail('the call succeeded'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof NachbarError, `not a NachbarError: ${String(error)}`);
  return error;
}

describe('AIClient against nachbar-ai', { skip: SKIP }, () => {
  let tmp: ReturnType<typeof tempDir>;
  let db: ServerProcess | undefined;
  let server: ServerProcess | undefined;
  let ai: AIClient;

  before(async () => {
    tmp = tempDir('nachbar-ts-ai-');
    db = await startServer('nachbar-db', ['--data-dir', path.join(tmp.dir, 'data')], tmp.dir);
    server = await startServer(
      'nachbar-ai',
      ['--db-port', String(db.port), '--model-dir', MODEL_DIR!, '--models', TEXT_MODEL],
      tmp.dir,
    );
    ai = new AIClient(server.address, { timeoutMs: 60_000 });
  });

  after(async () => {
    ai?.close();
    await server?.stop();
    await db?.stop();
    tmp?.remove();
  });

  it('lists the built text model and reports the db reachable', async () => {
    const model = (await ai.listModels()).find((m) => m.name === TEXT_MODEL);
    assert.ok(model, `${TEXT_MODEL} is not listed`);
    assert.equal(model.kind, 'embedding');
    assert.equal(model.modality, 'text');
    assert.equal(model.dimension, 384);
    assert.equal(model.available, true);
    const info = await ai.info();
    assert.equal(info.dbReachable, true);
    assert.ok(info.loadedModels.includes(TEXT_MODEL));
    await ai.ping();
  });

  it('embeds text into normalized vectors that put paraphrases close', async () => {
    const result = await ai.embed(TEXT_MODEL, ['a dog runs in the park', 'a puppy plays outside', 'the quarterly tax report is due']);
    assert.equal(result.dimension, 384);
    assert.equal(result.embeddings.length, 3);
    const [dog, puppy, tax] = result.embeddings as [number[], number[], number[]];
    assert.ok(Math.abs(Math.hypot(...dog) - 1) < 1e-3, 'unit length');
    assert.ok(cosine(dog, puppy) > cosine(dog, tax) + 0.2, 'paraphrases are closer than unrelated text');
    assert.ok((await rejection(ai.embed('no-such-model', ['x']))) instanceof NotFoundError);
  });

  it('keeps a text store: upsert, search with a filter, read and delete', async () => {
    const { store, created } = await ai.createStore('notes', { queryModel: TEXT_MODEL, indexModel: TEXT_MODEL, storeOriginal: true });
    assert.equal(created, true);
    assert.equal(store.queryModel, TEXT_MODEL);
    assert.equal(store.dbStore.dimension, 384);
    assert.equal(store.dbStore.metric, 'cosine');
    assert.ok((await ai.listStores()).some((s) => s.name === 'notes'));

    const docs = [
      { id: 'dog', input: 'My dog loves chasing balls in the garden.', metadata: { lang: 'en' } },
      { input: 'The stock market fell sharply on Monday.', metadata: { lang: 'en' } },
      { input: 'Der Hund schläft auf dem Sofa.', metadata: { lang: 'de' } },
      { input: 'Pasta needs plenty of salted boiling water.', metadata: { lang: 'en' } },
    ];
    const upserted = await ai.upsert('notes', docs);
    assert.equal(upserted.inserted, 4);
    assert.equal(upserted.ids.length, 4);
    assert.equal(upserted.ids[0], 'dog');
    assert.equal(new Set(upserted.ids).size, 4);
    const again = await ai.upsert('notes', [docs[1]!]);
    assert.deepEqual(again, { inserted: 0, updated: 1, ids: [upserted.ids[1]!] }, 'a derived id is stable');

    const found = await ai.getSimN('notes', 'a puppy playing fetch', 2);
    assert.equal(found.matches.length, 2);
    assert.equal(found.matches[0]!.id, 'dog');
    assert.equal(found.matches[0]!.original, docs[0]!.input);
    assert.ok(found.matches[0]!.similarity > found.matches[1]!.similarity);
    assert.equal(found.matches[0]!.rerankScore, undefined);

    const german = await ai.getSimN('notes', 'a puppy playing fetch', 5, { filter: { lang: { eq: 'de' } } });
    assert.deepEqual(german.matches.map((m) => m.id), [upserted.ids[2]]);

    const got = await ai.getKey('notes', ['dog', 'nope']);
    assert.deepEqual(got.entries, [{ id: 'dog', metadata: { lang: 'en' }, original: docs[0]!.input }]);
    assert.deepEqual(got.missingIds, ['nope']);
    const english = await ai.getByPredicate('notes', { filter: { lang: { eq: 'en' } } });
    assert.equal(english.entries.length, 3);

    assert.equal(await ai.deleteKeys('notes', ['dog']), 1);
    assert.equal(await ai.deleteByPredicate('notes', { lang: { eq: 'de' } }), 1);
    assert.equal((await ai.getStore('notes')).dbStore.count, 2);
    assert.equal(await ai.dropStore('notes'), true);
    assert.equal((await rejection(ai.getSimN('notes', 'x', 1))).code, 'NOT_FOUND');
  });

  it('indexes image files and finds them with text queries', async (t) => {
    const model = (await ai.listModels()).find((m) => m.name === IMAGE_MODEL);
    const photos = foolboxPhotos();
    const pick = (imagenetClass: number): string | undefined => photos.find((p) => p.endsWith(`_${imagenetClass}.jpg`));
    const [dog, strawberry, jeep] = [pick(243), pick(949), pick(609)];
    if (!model?.available || !dog || !strawberry || !jeep) {
      t.skip(`needs ${IMAGE_MODEL} built in ${MODEL_DIR} and the foolbox wheel's photos`);
      return;
    }
    await ai.createStore('photos', { queryModel: TEXT_MODEL, indexModel: IMAGE_MODEL, storeOriginal: true });
    const upserted = await ai.upsert('photos', [
      { id: 'dog', input: await imageFile(dog) },
      { id: 'strawberry', input: await imageFile(strawberry) },
      { id: 'jeep', input: readFileSync(jeep) },
    ]);
    assert.equal(upserted.inserted, 3);
    for (const [query, expected] of [
      ['a photo of a dog', 'dog'],
      ['a ripe strawberry', 'strawberry'],
      ['an off-road car', 'jeep'],
    ] as const) {
      const found = await ai.getSimN('photos', query, 1);
      assert.equal(found.matches[0]!.id, expected, query);
    }
    const [stored] = (await ai.getKey('photos', ['dog'])).entries;
    assert.deepEqual(stored!.original, readFileSync(dog), 'the original image bytes come back');
    await ai.dropStore('photos');
  });

  it('reranks with the cross-encoder when it is built', async (t) => {
    const model = (await ai.listModels()).find((m) => m.name === CROSS_ENCODER);
    if (!model?.available) {
      t.skip(`${CROSS_ENCODER} is not built in ${MODEL_DIR}`);
      return;
    }
    const ranked = await ai.rerank(CROSS_ENCODER, 'a dog in the park', ['quarterly tax report', 'a puppy on the grass'], { sigmoid: true });
    assert.equal(ranked[0]!.index, 1);
    assert.ok(ranked.every((r) => r.score >= 0 && r.score <= 1));

    await ai.createStore('reranked', { queryModel: TEXT_MODEL, indexModel: TEXT_MODEL, storeOriginal: true });
    await ai.upsert('reranked', [{ input: 'A cat sleeps on the sofa.' }, { input: 'Interest rates went up again.' }]);
    const found = await ai.getSimN('reranked', 'a sleeping kitten', 2, { rerank: { model: CROSS_ENCODER, originalText: true } });
    assert.equal(found.matches[0]!.original, 'A cat sleeps on the sofa.');
    assert.ok(found.matches.every((m) => typeof m.rerankScore === 'number'));
    await ai.dropStore('reranked');
  });

  it('trains, serves, lists and drops an adapter and a re-scorer', async () => {
    const topics = ['apples', 'rivers', 'engines', 'violins', 'glaciers', 'tigers'];
    const aspects = ['the history of', 'how to clean', 'the price of', 'drawings of'];
    const codes = ['zork', 'blip', 'quux', 'frob'];
    await ai.createStore('tailored', { queryModel: TEXT_MODEL, storeOriginal: false });
    await ai.upsert('tailored', topics.flatMap((t) => aspects.map((a, i) => ({ id: `${t}-${i}`, input: `${a} ${t}` }))));
    const examples = topics.flatMap((t) => codes.map((c, i) => ({ query: `${t} ${c}`, relevantIds: [`${t}-${i}`] })));

    const started = await ai.trainAdapter('tailored', 'v1', examples, { settings: { epochs: 20 } });
    assert.ok(['queued', 'training'].includes(started.state));
    let info = started;
    while (info.state === 'queued' || info.state === 'training') {
      await new Promise((resolve) => setTimeout(resolve, 100));
      info = await ai.getAdapter('tailored', 'v1');
    }
    assert.equal(info.state, 'ready', info.message);
    assert.equal(info.dimension, 384);
    assert.equal(info.weightBytes, 384 * 384 * 4);
    assert.ok(info.after.mrrAt10 >= info.before.mrrAt10);
    assert.deepEqual((await ai.listAdapters('tailored')).map((a) => a.name), ['v1']);

    const plain = await ai.getSimN('tailored', 'rivers frob', 3, { mode: 'exact' });
    const adapted = await ai.getSimN('tailored', 'rivers frob', 3, { mode: 'exact', adapter: 'v1' });
    assert.notDeepEqual(plain.matches.map((m) => m.similarity), adapted.matches.map((m) => m.similarity));
    assert.ok((await rejection(ai.getSimN('tailored', 'x', 1, { adapter: 'nope' }))) instanceof NotFoundError);

    await ai.trainRescorer('tailored', 'r1', examples, { settings: { epochs: 2 } });
    let rescorer = await ai.getRescorer('tailored', 'r1');
    while (rescorer.state === 'queued' || rescorer.state === 'training') {
      await new Promise((resolve) => setTimeout(resolve, 100));
      rescorer = await ai.getRescorer('tailored', 'r1');
    }
    assert.equal(rescorer.state, 'ready', rescorer.message);
    const reranked = await ai.getSimN('tailored', 'rivers frob', 3, { rescorer: { name: 'r1', candidates: 10 } });
    assert.ok(reranked.matches.every((m) => typeof m.rerankScore === 'number'));

    assert.equal(await ai.dropAdapter('tailored', 'v1'), true);
    assert.equal(await ai.dropAdapter('tailored', 'v1', { missingOk: true }), false);
    assert.equal(await ai.dropRescorer('tailored', 'r1'), true);
    assert.deepEqual(await ai.listRescorers('tailored'), []);
    await ai.dropStore('tailored');
  });
});
