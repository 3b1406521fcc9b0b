// A crowd of authenticated socket.io-client sockets, for tests that need many bystanders.
//   node crowd.mjs URL COUNT TOKEN [TOKEN...]
// Prints "ready N" once every socket has `init`, then "count EVENT N" lines on request: each
// line on stdin names an event; it answers how many of the crowd's sockets received it.
// Ends when stdin closes.
import { createInterface } from 'node:readline'
import { io } from 'socket.io-client'

const [url, count, ...tokens] = process.argv.slice(2)
const n = Number(count)
const received = new Map()
const sockets = []
let inits = 0
for (let i = 0; i < n; i++) {
  const s = io(url, { path: i % 2 ? '/socket.io' : '/audiobookshelf/socket.io', transports: ['websocket'], upgrade: false, reconnection: false, forceNew: true, timeout: 60000 })
  s.on('connect', () => s.emit('auth', tokens[i % tokens.length]))
  s.once('init', () => {
    if (++inits === n) console.log(`ready ${n}`)
  })
  s.once('auth_failed', (d) => console.log(`failed ${JSON.stringify(d)}`))
  s.onAny((event) => received.set(event, (received.get(event) || 0) + 1))
  sockets.push(s)
}
const rl = createInterface({ input: process.stdin })
rl.on('line', (event) => console.log(`count ${event} ${received.get(event.trim()) || 0}`))
rl.on('close', () => {
  for (const s of sockets) s.disconnect()
  process.exit(0)
})
