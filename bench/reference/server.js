// A faithful stand-in for audiobookshelf's own Socket.IO server (server/SocketAuthority.js of
// audiobookshelf 2.36), for benchmarks only. Per auth it does what audiobookshelf does: verify the
// JWT with the npm jsonwebtoken, read the user from the SQLite database, emit user_online to the
// admins, save lastSeen, build usersOnline for admins, and answer init. message_all_users is
// audiobookshelf's emitter loop over every authenticated client. Both socket paths share clients.
//   PORT=3333 DATABASE=absdatabase.sqlite NODE_ENV=production node server.js
'use strict'
const http = require('node:http')
const { Server } = require('socket.io')
const jwt = require('jsonwebtoken')
const Database = require('better-sqlite3')

const db = new Database(process.env.DATABASE, { timeout: 10000 })
const secret =
  process.env.JWT_SECRET_KEY ||
  JSON.parse(db.prepare("SELECT value FROM settings WHERE key = 'server-settings'").get().value).tokenSecret
const getUser = db.prepare("SELECT * FROM users WHERE id = ? OR json_extract(extraData, '$.oldUserId') = ? LIMIT 1")
const saveLastSeen = db.prepare('UPDATE users SET lastSeen = ?, updatedAt = ? WHERE id = ?')

// Sequelize's SQLite date text: 2026-12-04 13:05:09.123 +00:00
const sequelizeDate = (ms) => new Date(ms).toISOString().replace('T', ' ').replace('Z', ' +00:00')
const parseDate = (text) => (text ? Date.parse(text.replace(' +00:00', 'Z').replace(' ', 'T')) : null)

class User {
  constructor(row) {
    Object.assign(this, row)
    this.lastSeen = parseDate(row.lastSeen)
    this.createdAt = parseDate(row.createdAt)
  }
  get isAdminOrUp() {
    return this.type === 'root' || this.type === 'admin'
  }
  toJSONForPublic() {
    return { id: this.id, username: this.username, type: this.type, session: null, lastSeen: this.lastSeen, createdAt: this.createdAt }
  }
}

const clients = {}

function emitter(evt, data) {
  for (const id in clients) if (clients[id].user) clients[id].socket.emit(evt, data)
}
function adminEmitter(evt, data) {
  for (const id in clients) if (clients[id].user?.isAdminOrUp) clients[id].socket.emit(evt, data)
}
function getUsersOnline() {
  const online = {}
  for (const c of Object.values(clients)) {
    if (!c.user) continue
    if (online[c.user.id]) online[c.user.id].connections++
    else online[c.user.id] = { ...c.user.toJSONForPublic(), connections: 1 }
  }
  return Object.values(online)
}

async function authenticateSocket(socket, token) {
  let data
  try {
    data = jwt.verify(token, secret, { algorithms: ['HS256', 'HS384', 'HS512'] })
  } catch {
    return socket.emit('auth_failed', { message: 'Invalid token' })
  }
  if (!data?.userId || data.type === 'refresh' || data.type === 'api') return socket.emit('auth_failed', { message: 'Invalid token' })
  const row = getUser.get(data.userId, data.userId)
  if (!row) return socket.emit('auth_failed', { message: 'Invalid token' })
  if (!row.isActive) return socket.emit('auth_failed', { message: 'Invalid user' })
  const client = clients[socket.id]
  if (!client) return
  client.user = new User(row)
  adminEmitter('user_online', client.user.toJSONForPublic())
  client.user.lastSeen = Date.now()
  saveLastSeen.run(sequelizeDate(client.user.lastSeen), sequelizeDate(client.user.lastSeen), client.user.id)
  const init = { userId: client.user.id, username: client.user.username }
  if (client.user.isAdminOrUp) init.usersOnline = getUsersOnline()
  socket.emit('init', init)
}

function onConnection(socket) {
  clients[socket.id] = { id: socket.id, socket, connected_at: Date.now() }
  socket.on('auth', (token) => authenticateSocket(socket, token))
  socket.on('ping', () => socket.emit('pong'))
  socket.on('message_all_users', (payload) => {
    const client = clients[socket.id] || {}
    if (client.user?.isAdminOrUp) emitter('admin_message', payload?.message || '')
  })
  socket.on('disconnect', () => {
    const client = clients[socket.id]
    if (client?.user) adminEmitter('user_offline', client.user.toJSONForPublic())
    delete clients[socket.id]
  })
}

const server = http.createServer()
const options = { cors: { origin: '*', methods: ['GET', 'POST'] }, maxHttpBufferSize: 1e6, pingInterval: 25000, pingTimeout: 20000 }
for (const path of ['/socket.io', '/audiobookshelf/socket.io']) new Server(server, { ...options, path }).on('connection', onConnection)
server.listen(Number(process.env.PORT || 3333), '127.0.0.1')
process.on('SIGTERM', () => process.exit(0))
