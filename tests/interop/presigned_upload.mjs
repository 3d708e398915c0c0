// Upload one file with tus-js-client (tus 1.0) to a pre-signed endpoint, holding no API key,
// as a browser would: for tests/interop/test_tus_js_client_presigned.py.
//
// Usage: node presigned_upload.mjs '<json options>'
//   {"endpoint": "https://.../files/?es_action=upload&...", "path": "file",
//    "chunkSize": 1048576, "parallelUploads": 1, "filetype": "image/png"}
// Prints one JSON object per line: {"event": "url" | "success" | "error", ...}.

import { readFileSync } from 'node:fs'
import { basename } from 'node:path'
import tus from 'tus-js-client'

const opts = JSON.parse(process.argv[2])
const data = readFileSync(opts.path)
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }))

const upload = new tus.Upload(data, {
  endpoint: opts.endpoint,
  chunkSize: opts.chunkSize,
  parallelUploads: opts.parallelUploads ?? 1,
  retryDelays: [100, 300, 1000],
  metadata: { filename: basename(opts.path), filetype: opts.filetype ?? 'application/octet-stream' },
  onUploadUrlAvailable() {
    say('url', { url: upload.url })
  },
  onSuccess() {
    say('success', { url: upload.url })
  },
  onError(err) {
    say('error', { message: String(err) })
    process.exitCode = 1
  },
})
upload.start()
