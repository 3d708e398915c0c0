// Upload one file with the official tus JavaScript client (tus-js-client, Node API), for
// tests/interop/test_tus_js_client.py.
//
// Usage: node tus_js_upload.mjs '<json options>'
//   endpoint          the tus endpoint (".../files/")
//   path              the file to upload
//   source            "file" (an fs.ReadStream: resumable, fingerprinted), "buffer", or
//                     "stream" (a plain Readable of unknown length)
//   chunkSize, parallelUploads, uploadDataDuringCreation, uploadLengthDeferred,
//   overridePatchMethod, metadata, retryDelays, uploadUrl   as tus-js-client's options
//   urlStorage        a file for tus-js-client's FileUrlStorage (resume across processes)
//   resume            look the upload up in urlStorage and resume it
//   terminateAfter    abort with termination (DELETE) once this many bytes are accepted
//
// Prints one JSON object per line, flushed at once (the test may SIGKILL this process):
//   {"event": "url", "url"}                     the upload URL is known
//   {"event": "resumed", "url"}                 a previous upload was found in urlStorage
//   {"event": "request", "method", "offset", "concat", "checksum"}   before every request
//   {"event": "response", "method", "status", "offset"}               after every response
//   {"event": "chunk", "accepted", "total"}     a PATCH was acknowledged
//   {"event": "success", "url"} | {"event": "terminated"} | {"event": "error", "message"}

import fs from 'node:fs'
import { Readable } from 'node:stream'
import * as tus from 'tus-js-client'

const opts = JSON.parse(process.argv[2])
const say = (event, fields = {}) => fs.writeSync(1, `${JSON.stringify({ event, ...fields })}\n`)

let input
if (opts.source === 'buffer') input = fs.readFileSync(opts.path)
else if (opts.source === 'stream') {
  input = Readable.from(fs.createReadStream(opts.path), { objectMode: false })
}
else input = fs.createReadStream(opts.path)

const options = {
  endpoint: opts.endpoint,
  chunkSize: opts.chunkSize ?? Number.POSITIVE_INFINITY,
  parallelUploads: opts.parallelUploads ?? 1,
  uploadDataDuringCreation: Boolean(opts.uploadDataDuringCreation),
  uploadLengthDeferred: Boolean(opts.uploadLengthDeferred),
  overridePatchMethod: Boolean(opts.overridePatchMethod),
  metadata: opts.metadata ?? {},
  retryDelays: opts.retryDelays ?? [100, 500, 1000, 2000, 4000],
  removeFingerprintOnSuccess: true,
  onUploadUrlAvailable() {
    say('url', { url: upload.url })
  },
  onBeforeRequest(req) {
    say('request', {
      method: req.getMethod(),
      url: req.getURL(),
      offset: req.getHeader('Upload-Offset') ?? null,
      concat: req.getHeader('Upload-Concat') ?? null,
      checksum: req.getHeader('Upload-Checksum') ?? null,
    })
  },
  onAfterResponse(req, res) {
    say('response', {
      method: req.getMethod(),
      status: res.getStatus(),
      offset: res.getHeader('Upload-Offset') ?? null,
    })
  },
  onChunkComplete(_size, accepted, total) {
    say('chunk', { accepted, total })
    if (opts.terminateAfter != null && accepted >= opts.terminateAfter) {
      upload.abort(true).then(
        () => {
          say('terminated', { url: upload.url })
          process.exit(0)
        },
        (err) => {
          say('error', { message: String(err) })
          process.exit(1)
        },
      )
    }
  },
  onSuccess() {
    say('success', { url: upload.url })
    process.exit(0) // an unread source stream would keep Node alive
  },
  onError(err) {
    say('error', { message: String(err) })
    process.exit(1)
  },
}
if (opts.uploadUrl) options.uploadUrl = opts.uploadUrl
if (opts.urlStorage) options.urlStorage = new tus.FileUrlStorage(opts.urlStorage)

const upload = new tus.Upload(input, options)
if (opts.resume) {
  const previous = await upload.findPreviousUploads()
  if (previous.length > 0) {
    say('resumed', { url: previous[0].uploadUrl })
    upload.resumeFromPreviousUpload(previous[0])
  }
}
upload.start()
