import hudson.remoting.Callable;
import hudson.remoting.Channel;
import hudson.remoting.ChannelBuilder;
import hudson.remoting.Launcher;
import hudson.remoting.PingThread;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintWriter;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.jenkinsci.remoting.RoleChecker;

/**
 * One long-lived, warm controller JVM serving every channel of a test
 * controller, on remoting's own stack: benches/real_repoint.rs accepts each
 * JNLP4 channel and hands it over a loopback socket (a line with the node's
 * name, then the stream in stdio framing). On each channel this side makes
 * the first calls the way Jenkins' {@code SlaveComputer.setChannel} does:
 * callables whose classes the agent side loads from here (a log handler
 * installed, the remoting version, the OS, the charset, the environment,
 * the system properties, the remote FS root made, a ping thread started),
 * and only then is the node online.
 *
 * <p>Reports, one line each on the control socket, as they happen: {@code up
 * NODE} (channel built), {@code first NODE} (first call answered), {@code
 * online NODE} (all answered), {@code err NODE TEXT}.
 *
 * <p>Usage: {@code WarmController CONTROL_PORT}; the first line it writes
 * there is {@code listening PORT}, the port for channels. The nodes' remote
 * FS roots are made under the system property {@code bench.fs}.
 */
public class WarmController {
    /** Installs a log handler keeping the last records (SlaveInitializer). */
    static final class Initializer implements Callable<Void, RuntimeException> {
        private static final long serialVersionUID = 1L;

        @Override
        public Void call() {
            Logger root = Logger.getLogger("");
            root.addHandler(new Ring());
            System.setProperty("bench.initialized", "true");
            return null;
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    /** A bounded buffer of log records, as Jenkins keeps on an agent. */
    static final class Ring extends Handler {
        private final Deque<LogRecord> records = new ArrayDeque<>();

        @Override
        public synchronized void publish(LogRecord record) {
            if (records.size() == 256) {
                records.removeFirst();
            }
            records.addLast(record);
        }

        @Override
        public void flush() {}

        @Override
        public void close() {}
    }

    /** The agent's remoting version (SlaveVersion). */
    static final class Version implements Callable<String, IOException> {
        private static final long serialVersionUID = 1L;

        @Override
        public String call() {
            return Launcher.VERSION;
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    /** Whether the agent is Unix-like (DetectOS). */
    static final class Os implements Callable<Boolean, IOException> {
        private static final long serialVersionUID = 1L;

        @Override
        public Boolean call() {
            return File.pathSeparatorChar == ':';
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    /** The agent's default charset (DetectDefaultCharset). */
    static final class Charsets implements Callable<String, IOException> {
        private static final long serialVersionUID = 1L;

        @Override
        public String call() {
            return Charset.defaultCharset().name();
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    /** The agent's environment (EnvVars.getRemote). */
    static final class Environment implements Callable<HashMap<String, String>, IOException> {
        private static final long serialVersionUID = 1L;

        @Override
        public HashMap<String, String> call() {
            return new HashMap<>(System.getenv());
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    /** The agent's system properties (for the node's page). */
    static final class SystemProperties implements Callable<Map<Object, Object>, IOException> {
        private static final long serialVersionUID = 1L;

        @Override
        public Map<Object, Object> call() {
            Properties props = System.getProperties();
            return new HashMap<>(props);
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    /** Makes the remote FS root and answers its absolute path. */
    static final class Mkdirs implements Callable<String, IOException> {
        private static final long serialVersionUID = 1L;
        private final String path;

        Mkdirs(String path) {
            this.path = path;
        }

        @Override
        public String call() throws IOException {
            File dir = new File(path);
            if (!dir.isDirectory() && !dir.mkdirs()) {
                throw new IOException("cannot make " + dir);
            }
            return dir.getAbsolutePath();
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    /** Starts a ping thread on the agent (ChannelPinger's SetUpRemotePing). */
    static final class Pinger implements Callable<Void, IOException> {
        private static final long serialVersionUID = 1L;

        @Override
        public Void call() throws IOException {
            Channel channel = Channel.currentOrFail();
            new PingThread(channel, 240_000L, 300_000L) {
                @Override
                protected void onDead(Throwable cause) {}

                @Override
                protected void onDead() {}
            }.start();
            return null;
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    private static PrintWriter control;

    private static synchronized void report(String line) {
        control.println(line);
    }

    public static void main(String[] args) throws Exception {
        ExecutorService executor = Executors.newCachedThreadPool();
        Socket socket = new Socket(InetAddress.getLoopbackAddress(), Integer.parseInt(args[0]));
        socket.setTcpNoDelay(true);
        control = new PrintWriter(socket.getOutputStream(), true, StandardCharsets.UTF_8);
        try (ServerSocket channels = new ServerSocket(0, 16, InetAddress.getLoopbackAddress())) {
            report("listening " + channels.getLocalPort());
            // The control socket closing ends this JVM.
            Thread watch = new Thread(() -> {
                try {
                    socket.getInputStream().read();
                } catch (IOException e) {
                    // gone either way
                }
                System.exit(0);
            });
            watch.setDaemon(true);
            watch.start();
            while (true) {
                Socket accepted = channels.accept();
                accepted.setTcpNoDelay(true);
                executor.submit(() -> serve(accepted, executor));
            }
        }
    }

    /** One channel: its first calls, then kept until the agent leaves. */
    private static void serve(Socket socket, ExecutorService executor) {
        String node = "?";
        try (socket) {
            InputStream in = socket.getInputStream();
            OutputStream out = socket.getOutputStream();
            node = readLine(in);
            Channel channel = new ChannelBuilder(node, executor).build(in, out);
            report("up " + node);
            String root = new File(System.getProperty("bench.fs", System.getProperty("java.io.tmpdir")), node).getPath();
            channel.call(new Initializer());
            report("first " + node);
            channel.call(new Version());
            channel.call(new Os());
            channel.call(new Charsets());
            channel.call(new Environment());
            channel.call(new SystemProperties());
            channel.call(new Mkdirs(root));
            channel.call(new Pinger());
            report("online " + node);
            channel.join();
        } catch (Exception e) {
            report("err " + node + " " + e.toString().replace('\n', ' '));
        }
    }

    /** A line read byte by byte: what follows it belongs to the channel. */
    private static String readLine(InputStream in) throws IOException {
        StringBuilder line = new StringBuilder();
        for (int b; (b = in.read()) != '\n'; ) {
            if (b < 0) {
                throw new IOException("closed before the node's name");
            }
            line.append((char) b);
        }
        return line.toString();
    }
}
