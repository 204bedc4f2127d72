// A benchmark engine that streams the way remoting does, for the windowed
// benchmark (crates/agent/benches/windowed.rs). The message format and the
// controller's side are in crates/testkit/src/windowed.rs.
//
// Two ways to run it:
// - `java -jar windowed.jar [ignored engine options]`: the stdio engine, as
//   the agent starts the controller's remoting.jar. It speaks the stdio
//   preamble exactly as remoting's Launcher.runWithStdinStdout does
//   (PROTOCOL.md 4), reads System.in (an 8 KiB BufferedInputStream) and
//   writes the way remoting's StandardOutputStream reaches the original
//   System.out: a PrintStream with autoflush over a 128-byte
//   BufferedOutputStream (how java.lang.System builds System.out), each
//   chunk header and payload a separate write, flushed per command.
// - `java -jar windowed.jar -direct HOST PORT NODE SECRET`: agent.jar's
//   path, the baseline. The JVM performs JNLP4-connect itself (PROTOCOL.md
//   2: protocol line, ACK, TLS, headers, OK, capability) and runs the same
//   protocol over the TLS stream, with no bridge.
// - `java -jar windowed.jar -websocket URL NODE SECRET`: agent.jar's
//   `-webSocket` path, the baseline over a WebSocket (the JDK's client, where
//   agent.jar has Tyrus). As remoting's Engine.runWebSocket: the node, secret
//   and capability in the upgrade's headers, one binary message per chunk
//   (header and payload), each send waited for, and every message handled
//   on the thread that received it.
//
// Flow control, as remoting's PipeWindow/ProxyOutputStream: the sender has
// at most `hudson.remoting.Channel.pipeWindowSize` (default 1 MiB) unacked
// bytes in flight; it writes `windowed.write` (default 8 KiB) data bytes per
// DATA command, so a full command is two chunks (8192 bytes and 5), as a
// serialized ProxyOutputStream$Chunk is. The receiver acks each DATA command
// once it has consumed it, as remoting acks each Chunk command after writing
// it out. One reader thread handles incoming commands (and answers PINGs and
// acks at once); a sender thread per SEND streams; sends are serialized on
// one lock, as remoting's Channel.send is.
import java.io.*;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.WebSocket;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.cert.X509Certificate;
import java.time.Duration;
import java.util.Arrays;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManager;
import javax.net.ssl.X509ExtendedTrustManager;

public class WindowedEngine {
    static final byte[] MARK = "<===[JENKINS REMOTING CAPACITY]===>".getBytes(StandardCharsets.US_ASCII);
    static final String CAPABILITY = "rO0ABXNyABpodWRzb24ucmVtb3RpbmcuQ2FwYWJpbGl0eQAAAAAAAAABAgABSgAEbWFza3hwAAAAAAAAAf4=";
    static final int MAX_CHUNK = 8192;
    static final int MAX_COMMAND = 16 << 20;
    static final int WRITE = Integer.getInteger("windowed.write", 8192);
    static final long WINDOW = Long.getLong("hudson.remoting.Channel.pipeWindowSize", 1024 * 1024);
    static final int HANDSHAKE_TIMEOUT_MS = 30_000;

    private final InputStream in;
    private final OutputStream out; // guarded by this
    private final Object window = new Object();
    private int windowStream; // guarded by window
    private long acked; // guarded by window

    WindowedEngine(InputStream in, OutputStream out) {
        this.in = in;
        this.out = out;
    }

    public static void main(String[] args) throws Exception {
        if (args.length > 0 && args[0].equals("-direct")) {
            if (args.length != 5) {
                System.err.println("usage: java -jar windowed.jar -direct HOST PORT NODE SECRET");
                System.exit(2);
            }
            direct(args[1], Integer.parseInt(args[2]), args[3], args[4]);
        } else if (args.length > 0 && args[0].equals("-websocket")) {
            if (args.length != 4) {
                System.err.println("usage: java -jar windowed.jar -websocket URL NODE SECRET");
                System.exit(2);
            }
            webSocket(args[1], args[2], args[3]);
        } else {
            stdio();
        }
    }

    static void stdio() throws IOException {
        // java.lang.System#newPrintStream, as remoting finds System.out.
        PrintStream out = new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 128), true);
        System.setOut(System.err); // diagnostics never on the channel
        // System.in: an 8 KiB BufferedInputStream over fd 0.
        InputStream in = new BufferedInputStream(new FileInputStream(FileDescriptor.in), 8192);
        out.write(MARK);
        out.write(CAPABILITY.getBytes(StandardCharsets.US_ASCII));
        out.write(new byte[4]);
        out.flush();
        // The peer's preamble: its marker, capability text, then four zero bytes.
        int matched = 0;
        while (matched < MARK.length) {
            int b = in.read();
            if (b < 0) return;
            matched = (b == MARK[matched]) ? matched + 1 : (b == MARK[0] ? 1 : 0);
        }
        int zeros = 0;
        while (zeros < 4) {
            int b = in.read();
            if (b < 0) return;
            zeros = (b == 0) ? zeros + 1 : 0;
        }
        new WindowedEngine(in, out).serve();
    }

    static void direct(String host, int port, String node, String secret) throws Exception {
        Socket tcp = new Socket();
        tcp.connect(new InetSocketAddress(host, port), HANDSHAKE_TIMEOUT_MS);
        tcp.setTcpNoDelay(true);
        tcp.setSoTimeout(HANDSHAKE_TIMEOUT_MS);
        DataOutputStream plainOut = new DataOutputStream(tcp.getOutputStream());
        DataInputStream plainIn = new DataInputStream(tcp.getInputStream()); // unbuffered: TLS follows
        plainOut.writeUTF("Protocol:JNLP4-connect");
        plainOut.writeUTF("ACK");
        plainOut.flush();
        String ack = plainIn.readUTF();
        if (!ack.equals("ACK")) throw new IOException("expected ACK, got " + ack);

        // Trusts any certificate: this is a benchmark against the test
        // controller on loopback. agent.jar pins the controller's instance
        // identity (X-Instance-Identity); that check costs nothing per byte.
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, new TrustManager[] {new TrustAll()}, null);
        SSLSocket tls = (SSLSocket) context.getSocketFactory().createSocket(tcp, host, port, true);
        tls.setUseClientMode(true);
        tls.startHandshake();
        InputStream in = new BufferedInputStream(tls.getInputStream(), 8192);
        // Whole commands per TLS write, as agent.jar's NIO stack hands whole
        // frames to its SSLEngine (one record per 2-byte header would be a
        // handicap agent.jar does not have).
        OutputStream out = new BufferedOutputStream(tls.getOutputStream(), 32 * 1024);
        DataInputStream hin = new DataInputStream(in);
        DataOutputStream hout = new DataOutputStream(out);
        hout.writeUTF("{\"Node-Name\":\"" + json(node) + "\",\"Secret-Key\":\"" + json(secret) + "\"}");
        hout.flush();
        hin.readUTF(); // the controller's headers (its cookie)
        hout.writeUTF("OK");
        hout.flush();
        String answer = hin.readUTF();
        if (!answer.equals("OK")) throw new IOException("the controller refused: " + answer);
        hin.readUTF(); // its capability
        hout.writeUTF(CAPABILITY);
        hout.flush();
        tls.setSoTimeout(0);
        new WindowedEngine(in, out).serve();
    }
    static void webSocket(String url, String node, String secret) throws Exception {
        HttpClient.newHttpClient()
                .newWebSocketBuilder()
                .header("Node-Name", node)
                .header("Secret-Key", secret)
                .header("X-Remoting-Capability", CAPABILITY)
                .connectTimeout(Duration.ofMillis(HANDSHAKE_TIMEOUT_MS))
                .buildAsync(URI.create(url), new WebSocketTransport())
                .get(HANDSHAKE_TIMEOUT_MS, TimeUnit.MILLISECONDS);
        Thread.currentThread().join(); // the listener serves until the end
    }

    static String json(String s) {
        return s.replace("\\", "\\\\").replace("\"", "\\\"");
    }

    /** Reads commands until EOF, then exits. */
    void serve() throws IOException {
        DataInputStream data = new DataInputStream(in);
        Command command = new Command();
        while (true) {
            int header;
            try {
                header = data.readUnsignedShort(); // two read()s, as remoting's ChunkedInputStream
            } catch (EOFException e) {
                System.exit(0);
                return;
            }
            int n = header & 0x7fff;
            data.readFully(command.room(n), command.len, n);
            command.len += n;
            if ((header & 0x8000) != 0) continue;
            handle(command.take());
        }
    }

    /** A command being joined from its chunks. */
    static final class Command {
        byte[] bytes = new byte[64 * 1024];
        int len;

        /** The buffer, with room for `n` more bytes at `len`. */
        byte[] room(int n) throws IOException {
            if (len + n > bytes.length) {
                if (len + n > MAX_COMMAND) throw new IOException("a command of more than " + MAX_COMMAND + " bytes");
                bytes = Arrays.copyOf(bytes, Math.max(bytes.length * 2, len + n));
            }
            return bytes;
        }

        ByteBuffer take() {
            ByteBuffer whole = ByteBuffer.wrap(bytes, 0, len);
            len = 0;
            return whole;
        }
    }

    /** The WebSocket side of `-websocket`: each message one chunk. */
    static final class WebSocketTransport implements WebSocket.Listener {
        private final ByteBuffer message = ByteBuffer.allocate(2 + MAX_CHUNK);
        private final Command command = new Command();
        private WindowedEngine engine;

        @Override
        public void onOpen(WebSocket ws) {
            engine = new WindowedEngine(InputStream.nullInputStream(), new MessageOutput(ws));
            ws.request(1);
        }

        @Override
        public CompletionStage<?> onBinary(WebSocket ws, ByteBuffer data, boolean last) {
            try {
                if (data.remaining() > message.remaining()) throw new IOException("a message of more than one chunk");
                message.put(data);
                if (last) {
                    message.flip();
                    chunk();
                    message.clear();
                }
            } catch (IOException e) {
                e.printStackTrace();
                System.exit(1);
            }
            ws.request(1);
            return null;
        }

        private void chunk() throws IOException {
            if (message.remaining() < 2) throw new IOException("a message shorter than a chunk header");
            int header = message.getShort() & 0xffff;
            int n = header & 0x7fff;
            if (n != message.remaining()) throw new IOException("a chunk of " + n + " bytes in a message of " + message.remaining());
            message.get(command.room(n), command.len, n);
            command.len += n;
            if ((header & 0x8000) == 0) engine.handle(command.take());
        }

        @Override
        public CompletionStage<?> onClose(WebSocket ws, int status, String reason) {
            System.exit(0);
            return null;
        }

        @Override
        public void onError(WebSocket ws, Throwable error) {
            error.printStackTrace();
            System.exit(1);
        }
    }

    /** Sends what `send` wrote, on each flush, one binary message per chunk, each waited for. */
    static final class MessageOutput extends ByteArrayOutputStream {
        private final WebSocket ws;

        MessageOutput(WebSocket ws) {
            super(2 + MAX_CHUNK);
            this.ws = ws;
        }

        @Override
        public void flush() throws IOException {
            int off = 0;
            while (off + 2 <= count) {
                int n = ((buf[off] & 0x7f) << 8) | (buf[off + 1] & 0xff);
                try {
                    ws.sendBinary(ByteBuffer.wrap(buf, off, 2 + n), true).get(5, TimeUnit.MINUTES);
                } catch (Exception e) {
                    throw new IOException(e);
                }
                off += 2 + n;
            }
            reset();
        }
    }

    void handle(ByteBuffer c) throws IOException {
        if (!c.hasRemaining()) return; // an empty command
        byte kind = c.get();
        switch (kind) {
            case 'D': {
                int stream = c.getInt();
                int n = c.remaining(); // consumed: nothing to do with the bytes
                send(ByteBuffer.allocate(9).put((byte) 'A').putInt(stream).putInt(n).array());
                break;
            }
            case 'A': {
                int stream = c.getInt();
                long n = c.getInt() & 0xffffffffL;
                synchronized (window) {
                    if (stream == windowStream) {
                        acked += n;
                        window.notifyAll();
                    }
                }
                break;
            }
            case 'P':
                send(ByteBuffer.allocate(9).put((byte) 'Q').putLong(c.getLong()).array());
                break;
            case 'S': {
                int stream = c.getInt();
                long total = c.getLong();
                synchronized (window) {
                    windowStream = stream;
                    acked = 0;
                }
                Thread sender = new Thread(() -> {
                    try {
                        stream(stream, total);
                    } catch (IOException | InterruptedException e) {
                        e.printStackTrace();
                        System.exit(1);
                    }
                }, "sender-" + stream);
                sender.setDaemon(true);
                sender.start();
                break;
            }
            case 'X':
                System.exit(0);
                break;
            default:
                throw new IOException("unknown message kind " + kind);
        }
    }

    /** Streams `total` bytes within the window. */
    void stream(int stream, long total) throws IOException, InterruptedException {
        byte[] command = new byte[5 + WRITE];
        ByteBuffer.wrap(command).put((byte) 'D').putInt(stream);
        Arrays.fill(command, 5, command.length, (byte) 0x42);
        long sent = 0;
        while (sent < total) {
            int n = (int) Math.min(WRITE, total - sent);
            synchronized (window) {
                while (sent + n - acked > Math.max(WINDOW, n)) window.wait();
            }
            send(command, 5 + n);
            sent += n;
        }
    }

    void send(byte[] command) throws IOException {
        send(command, command.length);
    }

    /** One command: chunks of at most 8 KiB, header and payload as separate writes, then a flush. */
    synchronized void send(byte[] command, int len) throws IOException {
        int off = 0;
        do {
            int n = Math.min(MAX_CHUNK, len - off);
            boolean more = off + n < len;
            out.write(new byte[] {(byte) ((n >> 8) | (more ? 0x80 : 0)), (byte) n});
            out.write(command, off, n);
            off += n;
        } while (off < len);
        out.flush();
    }

    static final class TrustAll extends X509ExtendedTrustManager {
        public void checkClientTrusted(X509Certificate[] chain, String auth) {}
        public void checkServerTrusted(X509Certificate[] chain, String auth) {}
        public void checkClientTrusted(X509Certificate[] chain, String auth, Socket socket) {}
        public void checkServerTrusted(X509Certificate[] chain, String auth, Socket socket) {}
        public void checkClientTrusted(X509Certificate[] chain, String auth, SSLEngine engine) {}
        public void checkServerTrusted(X509Certificate[] chain, String auth, SSLEngine engine) {}
        public X509Certificate[] getAcceptedIssuers() {
            return new X509Certificate[0];
        }
    }
}
