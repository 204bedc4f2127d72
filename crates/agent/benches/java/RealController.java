import hudson.remoting.Callable;
import hudson.remoting.Channel;
import hudson.remoting.ChannelBuilder;
import hudson.remoting.Pipe;
import java.io.BufferedReader;
import java.io.File;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintWriter;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.jenkinsci.remoting.RoleChecker;

/**
 * The controller's side of one agent channel, on remoting's own stack:
 * benches/real_engine.rs hands it an accepted JNLP4 channel on stdin/stdout
 * (stdio framing, as for a stdio agent) and drives it over a loopback
 * socket, one command a line, one answer a line:
 *
 * <ul>
 *   <li>{@code calls}: a controller's first calls (remote class loading of
 *       a callable, as {@code SlaveComputer.setChannel} starts with); answers
 *       {@code ok FIRST_MS TEN_MS}.
 *   <li>{@code down N}: N bytes controller to agent through a remoting
 *       {@link Pipe}; answers {@code ok MS}.
 *   <li>{@code up N}: N bytes agent to controller; answers {@code ok MS}.
 * </ul>
 *
 * <p>Usage: {@code RealController PORT}. Needs a real remoting.jar on the
 * class path.
 */
public class RealController {
    /** Lists a directory and reads a system property on the agent. */
    static final class Probe implements Callable<Integer, RuntimeException> {
        private static final long serialVersionUID = 1L;
        private final String dir;

        Probe(String dir) {
            this.dir = dir;
        }

        @Override
        public Integer call() {
            String[] names = new File(dir).list();
            return (names == null ? 0 : names.length) + System.getProperty("java.version").length();
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    /** Reads a pipe to its end on the agent; returns the bytes read. */
    static final class Sink implements Callable<Long, Exception> {
        private static final long serialVersionUID = 1L;
        private final Pipe pipe;

        Sink(Pipe pipe) {
            this.pipe = pipe;
        }

        @Override
        public Long call() throws Exception {
            byte[] buf = new byte[64 * 1024];
            long total = 0;
            try (InputStream in = pipe.getIn()) {
                for (int n; (n = in.read(buf)) >= 0; ) {
                    total += n;
                }
            }
            return total;
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    /** Writes N bytes into a pipe on the agent. */
    static final class Source implements Callable<Long, Exception> {
        private static final long serialVersionUID = 1L;
        private final Pipe pipe;
        private final long bytes;

        Source(Pipe pipe, long bytes) {
            this.pipe = pipe;
            this.bytes = bytes;
        }

        @Override
        public Long call() throws Exception {
            byte[] buf = new byte[64 * 1024];
            long left = bytes;
            try (OutputStream out = pipe.getOut()) {
                while (left > 0) {
                    int n = (int) Math.min(buf.length, left);
                    out.write(buf, 0, n);
                    left -= n;
                }
            }
            return bytes;
        }

        @Override
        public void checkRoles(RoleChecker checker) {}
    }

    public static void main(String[] args) throws Exception {
        ExecutorService executor = Executors.newCachedThreadPool();
        Channel channel = new ChannelBuilder("bench", executor).build(System.in, System.out);
        String dir = System.getProperty("java.io.tmpdir");
        try (Socket control = new Socket("127.0.0.1", Integer.parseInt(args[0]));
                BufferedReader in = new BufferedReader(
                        new InputStreamReader(control.getInputStream(), StandardCharsets.UTF_8));
                PrintWriter out = new PrintWriter(control.getOutputStream(), true, StandardCharsets.UTF_8)) {
            for (String line; (line = in.readLine()) != null; ) {
                String[] words = line.trim().split(" ");
                long start = System.nanoTime();
                try {
                    switch (words[0]) {
                        case "calls" -> {
                            channel.call(new Probe(dir));
                            long first = System.nanoTime();
                            for (int i = 0; i < 9; i++) {
                                channel.call(new Probe(dir));
                            }
                            out.println("ok " + ms(first - start) + " " + ms(System.nanoTime() - start));
                        }
                        case "down" -> {
                            long bytes = Long.parseLong(words[1]);
                            Pipe pipe = Pipe.createLocalToRemote();
                            Future<Long> read = channel.callAsync(new Sink(pipe));
                            byte[] buf = new byte[64 * 1024];
                            long left = bytes;
                            try (OutputStream os = pipe.getOut()) {
                                while (left > 0) {
                                    int n = (int) Math.min(buf.length, left);
                                    os.write(buf, 0, n);
                                    left -= n;
                                }
                            }
                            long got = read.get();
                            out.println(got == bytes ? "ok " + ms(System.nanoTime() - start) : "err short " + got);
                        }
                        case "up" -> {
                            long bytes = Long.parseLong(words[1]);
                            Pipe pipe = Pipe.createRemoteToLocal();
                            Future<Long> wrote = channel.callAsync(new Source(pipe, bytes));
                            byte[] buf = new byte[64 * 1024];
                            long got = 0;
                            try (InputStream is = pipe.getIn()) {
                                for (int n; (n = is.read(buf)) >= 0; ) {
                                    got += n;
                                }
                            }
                            wrote.get();
                            out.println(got == bytes ? "ok " + ms(System.nanoTime() - start) : "err short " + got);
                        }
                        default -> out.println("err unknown command");
                    }
                } catch (Exception e) {
                    out.println("err " + e.toString().replace('\n', ' '));
                }
            }
        } finally {
            channel.close();
            executor.shutdownNow();
        }
    }

    private static long ms(long nanos) {
        return nanos / 1_000_000;
    }
}
