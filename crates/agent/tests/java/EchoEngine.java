// A stand-in engine that runs on a real JVM, for the agent's java launch path:
// it speaks the stdio preamble of `java -jar remoting.jar`, echoes every chunk,
// and records its command line, a system property and its environment in
// <workDir>/engine-launch.txt. Compiled and packaged by the test itself.
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;

public class EchoEngine {
    static final byte[] MARK = "<===[JENKINS REMOTING CAPACITY]===>".getBytes(StandardCharsets.US_ASCII);
    static final String CAPABILITY = "rO0ABXNyABpodWRzb24ucmVtb3RpbmcuQ2FwYWJpbGl0eQAAAAAAAAABAgABSgAEbWFza3hwAAAAAAAAAf4=";

    public static void main(String[] args) throws Exception {
        String workDir = null;
        for (int i = 0; i + 1 < args.length; i++) {
            if (args[i].equals("-workDir")) workDir = args[i + 1];
        }
        if (workDir != null) {
            String text = "args=" + String.join(" ", args) + "\n"
                    + "marker=" + System.getProperty("test.marker") + "\n"
                    + "socket=" + System.getenv("JNLP_AGENT_CONTROL_SOCKET") + "\n"
                    + "secret-env=" + System.getenv("JENKINS_SECRET") + "\n";
            Files.write(Paths.get(workDir, "engine-launch.txt"), text.getBytes(StandardCharsets.UTF_8));
        }
        OutputStream out = new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16);
        out.write(MARK);
        out.write(CAPABILITY.getBytes(StandardCharsets.US_ASCII));
        out.write(new byte[4]);
        out.flush();
        DataInputStream in = new DataInputStream(new BufferedInputStream(new FileInputStream(FileDescriptor.in), 1 << 16));
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
        byte[] payload = new byte[0x7fff];
        while (true) {
            int header;
            try {
                header = in.readUnsignedShort();
            } catch (EOFException e) {
                return;
            }
            int len = header & 0x7fff;
            in.readFully(payload, 0, len);
            out.write(header >> 8);
            out.write(header & 0xff);
            out.write(payload, 0, len);
            if (in.available() == 0) out.flush();
        }
    }
}
