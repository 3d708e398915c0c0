// Upload one file with tus-js-client speaking the IETF draft (protocol 'ietf-draft-05',
// interop version 6), for tests/interop/test_tus_js_client_ietf.py.
//
// Usage: node ietf_upload.mjs '<json options>'
//   {"endpoint": ".../files/", "path": "file", "chunkSize": 1048576,
//    "uploadUrl": null, "uploadDataDuringCreation": false}
// Prints one JSON object per line: {"event": "url" | "chunk" | "success" | "error", ...}.
// With `uploadUrl`, the client resumes that upload (HEAD, then PATCH from its offset).

import { readFileSync } from 'node:fs'
import { basename } from 'node:path'
import tus from 'tus-js-client'

const opts = JSON.parse(process.argv[2])
const data = readFileSync(opts.path)
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }))

const upload = new tus.Upload(data, {
  endpoint: opts.endpoint,
  uploadUrl: opts.uploadUrl ?? null,
  protocol: 'ietf-draft-05',
  chunkSize: opts.chunkSize,
  uploadDataDuringCreation: Boolean(opts.uploadDataDuringCreation),
  retryDelays: [100, 300, 1000, 2000],
  metadata: { filename: basename(opts.path), filetype: 'application/octet-stream' },
  onUploadUrlAvailable() {
    say('url', { url: upload.url })
  },
  onChunkComplete(chunkSize, accepted, total) {
    say('chunk', { accepted, total })
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
