// tus-js-client (Node) for the benchmarks: like ../shared/peers/tus-js-upload.mjs, plus request
// headers from $TUS_HEADERS (JSON), e.g. an Authorization header.
// usage: node tus-js-upload.mjs ENDPOINT FILE [CHUNK_MIB=50] [PARALLEL=1]
import * as tus from 'tus-js-client'
import fs from 'node:fs'
const [url, file, chunkMiB = '50', par = '1'] = process.argv.slice(2)
const size = fs.statSync(file).size
const headers = JSON.parse(process.env.TUS_HEADERS || '{}')
const t0 = performance.now()
const up = new tus.Upload(fs.createReadStream(file), {
  endpoint: url,
  ...(Number(par) > 1 ? {} : { uploadSize: size }),
  chunkSize: Number(chunkMiB) * 1024 * 1024,
  parallelUploads: Number(par),
  headers,
  metadata: { filename: file.split('/').pop() },
  retryDelays: [0, 1000, 3000],
  onError: (e) => { console.error('error', e.message); process.exit(1) },
  onSuccess: () => {
    const s = (performance.now() - t0) / 1000
    console.log(JSON.stringify({ url: up.url, seconds: s, MBps: size / s / 1e6 }))
  },
})
up.start()
