//! `fake-engine`: a stand-in for `java -jar remoting.jar` on stdio; see
//! [`testkit::fake_engine`].

fn main() -> std::process::ExitCode {
    testkit::fake_engine::main()
}
