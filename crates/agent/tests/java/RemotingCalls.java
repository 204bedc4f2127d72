import hudson.remoting.Callable;
import hudson.remoting.Channel;
import hudson.remoting.ChannelBuilder;
import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.jenkinsci.remoting.RoleChecker;

/**
 * The first remote calls into a freshly started remoting engine, as a
 * controller makes them: starts {@code java [opts] -jar remoting.jar} on
 * stdio, opens a channel to it with remoting's own ChannelBuilder (what a
 * controller does for a stdio agent) and times the first calls, whose
 * classes the engine loads from this side. Needs a real remoting.jar on
 * the class path; benches/engine_start.rs compiles and runs it when
 * BENCH_ENGINE_JAR is set.
 *
 * <p>Usage: {@code RemotingCalls JAVA JAR ROUNDS [JVM options...]}. Starts
 * ROUNDS engines one after the other (the first warms this side up) and
 * prints a line per engine: {@code channel=MS first=MS ten=MS}, times
 * since that engine's process start.
 */
public class RemotingCalls {
    /** Lists a directory and reads a system property on the engine. */
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

    public static void main(String[] args) throws Exception {
        List<String> command = new ArrayList<>();
        command.add(args[0]);
        for (int i = 3; i < args.length; i++) {
            command.add(args[i]);
        }
        command.add("-jar");
        command.add(args[1]);
        int rounds = Integer.parseInt(args[2]);
        ExecutorService executor = Executors.newCachedThreadPool();
        String dir = System.getProperty("java.io.tmpdir");
        for (int round = 0; round < rounds; round++) {
            long start = System.nanoTime();
            Process engine = new ProcessBuilder(command)
                    .redirectError(ProcessBuilder.Redirect.INHERIT)
                    .start();
            Channel channel = new ChannelBuilder("bench", executor)
                    .build(engine.getInputStream(), engine.getOutputStream());
            long opened = System.nanoTime();
            channel.call(new Probe(dir));
            long first = System.nanoTime();
            for (int i = 0; i < 9; i++) {
                channel.call(new Probe(dir));
            }
            long ten = System.nanoTime();
            System.out.printf(
                    "channel=%d first=%d ten=%d%n",
                    (opened - start) / 1_000_000,
                    (first - start) / 1_000_000,
                    (ten - start) / 1_000_000);
            channel.close();
            engine.destroy();
            engine.waitFor();
        }
        executor.shutdownNow();
    }
}
