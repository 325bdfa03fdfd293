//! Compiles etcd's (reduced) API definitions without a system `protoc`: protox parses them
//! into a FileDescriptorSet, from which tonic-prost-build writes the messages, the server
//! traits and the clients.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/kv.proto", "proto/rpc.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
