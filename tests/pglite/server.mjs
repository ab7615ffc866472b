// Serve an in-memory PGlite (PostgreSQL 17 in WebAssembly, with TimescaleDB and btree_gist) over
// the PostgreSQL wire protocol on 127.0.0.1, on a free port. Prints one line
// `PGLITE_READY <port>` once it accepts connections; stops on SIGTERM/SIGINT or when stdin closes,
// so it never outlives the process that started it.
import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'
import { btree_gist } from '@electric-sql/pglite/contrib/btree_gist'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'

const db = await PGlite.create({ extensions: { timescaledb, btree_gist } })
const server = new PGLiteSocketServer({ db, host: '127.0.0.1', port: 0 })
let port = 0
server.addEventListener('listening', (event) => { port = event.detail.port })
await server.start()
process.stdout.write(`PGLITE_READY ${port}\n`)

let stopping = false
async function stop () {
  if (stopping) return
  stopping = true
  await server.stop()
  await db.close()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
process.stdin.on('end', stop)
process.stdin.on('close', stop)
process.stdin.resume()
