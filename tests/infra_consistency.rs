//! Consistency checks between the Bicep in infra/, the function folders, the settings the
//! handler reads and azure.yaml. No Bicep compiler runs here, so these read the files as text:
//! they catch a renamed queue, a forgotten app setting, a wrong role GUID or a key creeping in,
//! not Bicep type errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Settings the handler reads that the Bicep deliberately does not set, and why.
const AZURE_ONLY_ABSENT: &[(&str, &str)] = &[
    (
        "AZURE_CLIENT_ID",
        "must be absent in Azure: the app uses its system-assigned identity, and a client id would \
         make the handler ask the identity endpoint for a user-assigned identity the app does not have",
    ),
    ("AOAI_ADAPTIVE_PACING", "on by default (true); false only to compare with the behaviour before adaptive pacing"),
    (
        "STREAM_KEEP_ALIVE_SECONDS",
        "the default (15 s) is well inside Azure's 230 s idle limit and YARP's 240 s; another value is for tests",
    ),
    (
        "AOAI_QUOTA_WINDOW_SECONDS",
        "Azure counts a deployment's tokens per minute (the default, 60); another value is for emulators only",
    ),
    ("AZURE_TENANT_ID", "only for the Azure CLI / azd credential in local runs; managed identity needs no tenant"),
    (
        "AOAI_REASONING_EFFORT",
        "absent = the lowest reasoning effort the deployment accepts, found by the handler on its first call; \
         a template value would break when the model changes (a non-reasoning model refuses any effort)",
    ),
    (
        "AOAI_CONTEXT_TOKENS",
        "absent by default: the handler learns the deployment's context window from its first \
         context_length_exceeded answer, so any deployment works without it",
    ),
    (
        "LOG_SENSITIVE_DATA",
        "off by default (false); set it by hand for a debugging session only, never in the template",
    ),
    ("RUST_LOG", "`info` by default, which is what Azure should run; raise it by hand when debugging"),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "no OTLP collector is deployed: the handler exports to Application Insights itself \
         (APPLICATIONINSIGHTS_CONNECTION_STRING), and its logs reach it through the host (stdout)",
    ),
    ("WEBSITE_SITE_NAME", "set by the platform to the Function App's name; nobody sets it"),
    ("WEBSITE_INSTANCE_ID", "set by the platform to each instance's id; nobody sets it"),
    (
        "OTEL_TRACES_SAMPLER",
        "absent by default: with Application Insights the distros' rate limit (5 traces per second per instance) \
         applies; an operator sets another sampler by hand (e.g. every trace while debugging)",
    ),
    ("OTEL_TRACES_SAMPLER_ARG", "read only with OTEL_TRACES_SAMPLER, which is not set by default"),
];

/// Built-in role GUIDs, from the table in shared/spec/infra.md.
const ROLE_TABLE: &[(&str, &str)] = &[
    ("Cognitive Services OpenAI User", "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd"),
    ("Cognitive Services OpenAI Contributor", "a001fd3d-188f-4b5d-821b-7da978bf7442"),
    ("Cognitive Services User", "a97b65f3-24c7-4388-baec-2e87135dc908"),
    ("Azure AI User", "53ca6127-db72-4b80-b1b0-d745d6d5456d"),
    ("Storage Blob Data Owner", "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"),
    ("Storage Blob Data Contributor", "ba92f5b4-2d11-453d-a403-e96b0029c9fe"),
    ("Storage Queue Data Contributor", "974c5e8b-45b9-4653-ba55-5f855dd0fb88"),
    ("Storage Queue Data Reader", "19e7f393-937e-4f77-808e-94535e297925"),
    ("Storage Queue Data Message Processor", "8a0f0c08-91a1-4084-bc3d-661d67233fed"),
    ("Storage Queue Data Message Sender", "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"),
    ("Storage Table Data Contributor", "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"),
    ("Monitoring Metrics Publisher", "3913510d-42f4-4e42-8a64-420c390055eb"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Bicep source without `//` comments (a `//` inside a '...' string is kept).
fn bicep(rel: &str) -> String {
    let mut out = String::new();
    for line in read(rel).lines() {
        let mut in_string = false;
        let mut prev = ' ';
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            if c == '\'' {
                in_string = !in_string;
            } else if c == '/' && prev == '/' && !in_string {
                cut = i - 1;
                break;
            }
            prev = c;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The bracketed block (`{...}` or `[...]`) that follows the first occurrence of `marker`.
fn block<'a>(text: &'a str, marker: &str) -> &'a str {
    let start = text.find(marker).unwrap_or_else(|| panic!("`{marker}` not found"));
    let open = start + text[start..].find(['{', '[']).expect("no block after marker");
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open..=open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced block after `{marker}`")
}

/// `var x = 'literal'` declarations.
fn string_vars(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("var "))
        .filter_map(|l| l.split_once(" = "))
        .filter_map(|(k, v)| Some((k.trim().to_owned(), unquote(v.trim())?)))
        .collect()
}

fn unquote(v: &str) -> Option<String> {
    let inner = v.strip_prefix('\'')?.strip_suffix('\'')?;
    (!inner.contains("${")).then(|| inner.to_owned())
}

/// The values of `key: ...` inside a block, with variables resolved.
fn values_of(block: &str, key: &str, vars: &BTreeMap<String, String>) -> BTreeSet<String> {
    let pattern = format!("{key}:");
    block
        .split(['\n', '{', ','])
        .filter_map(|part| part.trim().strip_prefix(pattern.as_str()))
        .map(|v| v.trim().trim_end_matches(['}', ']', ' ', ',']))
        .map(|v| unquote(v).or_else(|| vars.get(v).cloned()).unwrap_or_else(|| panic!("cannot resolve `{v}`")))
        .collect()
}

/// The keys of an object block (`KEY: value` lines at its first level).
fn object_keys(block: &str) -> BTreeSet<String> {
    let inner = &block[1..block.len() - 1];
    let mut keys = BTreeSet::new();
    let mut depth = 0;
    for line in inner.lines() {
        if depth == 0
            && let Some((key, _)) = line.trim().split_once(':')
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            keys.insert(key.to_owned());
        }
        depth += line.matches(['{', '[']).count() as i32 - line.matches(['}', ']']).count() as i32;
    }
    keys
}

/// GUID-shaped substrings (8-4-4-4-12 hex digits).
fn guids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let shape = [8, 4, 4, 4, 12];
    let mut found = Vec::new();
    for start in 0..bytes.len() {
        let mut i = start;
        let ok = shape.iter().enumerate().all(|(n, &len)| {
            let hex = bytes.len() >= i + len && bytes[i..i + len].iter().all(u8::is_ascii_hexdigit);
            i += len;
            let sep = n == 4 || bytes.get(i) == Some(&b'-');
            i += 1;
            hex && sep
        });
        if ok && (start == 0 || !bytes[start - 1].is_ascii_hexdigit()) {
            found.push(text[start..start + 36].to_owned());
        }
    }
    found
}

fn infra_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { walk(&path, out) } else { out.push(path) }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("infra"), &mut files);
    files.sort();
    files.iter().map(|p| p.strip_prefix(root()).unwrap().to_string_lossy().into_owned()).collect()
}

fn function_bindings() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root()).unwrap() {
        let dir = entry.unwrap().path();
        let file = dir.join("function.json");
        if file.is_file() {
            let json: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            for binding in json["bindings"].as_array().expect("bindings array") {
                out.push((name.clone(), binding.clone()));
            }
        }
    }
    assert!(!out.is_empty(), "no function folders found");
    out
}

fn app_settings() -> BTreeSet<String> {
    object_keys(block(&bicep("infra/app/function.bicep"), "var appSettings ="))
}

#[test]
fn every_binding_queue_container_and_connection_exists_in_the_bicep() {
    let main = bicep("infra/main.bicep");
    let vars = string_vars(&main);
    let storage = block(&main, "'br/public:avm/res/storage/storage-account:");
    let queues = values_of(block(storage, "queueServices:"), "name", &vars);
    let containers = values_of(block(storage, "blobServices:"), "name", &vars);
    let rbac = block(&main, "module rbac ");
    let settings = app_settings();

    for (function, binding) in function_bindings() {
        let kind = binding["type"].as_str().unwrap_or_default();
        let what = format!("{function}: binding {}", binding["name"]);
        if let Some(connection) = binding["connection"].as_str() {
            for suffix in ["blobServiceUri", "queueServiceUri", "credential"] {
                let setting = format!("{connection}__{suffix}");
                assert!(settings.contains(&setting), "{what}: app setting {setting} missing");
            }
        }
        match kind {
            "queueTrigger" | "queue" => {
                let queue = binding["queueName"].as_str().expect("queueName");
                assert!(queues.contains(queue), "{what}: queue `{queue}` not created (have {queues:?})");
            }
            "blob" | "blobTrigger" => {
                let container = binding["path"].as_str().expect("path").split('/').next().unwrap();
                assert!(containers.contains(container), "{what}: container `{container}` not created");
            }
            _ => {}
        }
        if kind == "queueTrigger" {
            // The host moves messages to `<queue>-poison`; rbac.bicep gives the app Storage Queue
            // Data Contributor on both (the_queue_roles_let_the_extension_release_and_renew_messages).
            let queue = binding["queueName"].as_str().unwrap();
            let poison = format!("{queue}-poison");
            assert!(queues.contains(&poison), "{what}: poison queue `{poison}` not created");
            assert_eq!(values_of(rbac, "jobsQueueName", &vars), BTreeSet::from([queue.to_owned()]));
            assert_eq!(values_of(rbac, "jobsPoisonQueueName", &vars), BTreeSet::from([poison]));
        }
        if kind == "queue" && function == "process_job" {
            let queue = binding["queueName"].as_str().unwrap().to_owned();
            assert_eq!(values_of(rbac, "resultsQueueName", &vars), BTreeSet::from([queue]));
        }
    }
}

#[test]
fn a_stored_job_is_written_and_read_at_the_path_the_handler_names() {
    let bindings = function_bindings();
    let path_of = |function: &str, name: &str, direction: &str| -> String {
        let (_, binding) = bindings
            .iter()
            .find(|(f, b)| f == function && b["name"] == name)
            .unwrap_or_else(|| panic!("{function} has no binding `{name}`"));
        assert_eq!((binding["type"].as_str(), binding["direction"].as_str()), (Some("blob"), Some(direction)));
        // Binding expressions are case-insensitive: `{id}` (route) and `{Id}` (message) alike.
        binding["path"].as_str().unwrap().replace("{id}", "X").replace("{Id}", "X")
    };
    let expected = handler::jobs::Job::stored_path("X");
    assert_eq!(path_of("put_job", "input_blob", "out"), expected);
    assert_eq!(path_of("process_job", "stored_input", "in"), expected);
    assert_eq!(path_of("put_job", "existing_result", "in"), "results/X.json");
    let put = bindings.iter().filter(|(f, _)| f == "put_job").map(|(_, b)| b).collect::<Vec<_>>();
    let trigger = put.iter().find(|b| b["type"] == "httpTrigger").expect("put_job is an HTTP trigger");
    assert_eq!(
        (trigger["route"].as_str(), trigger["methods"].clone()),
        (Some("jobs/{id}"), serde_json::json!(["put"]))
    );
    assert!(put.iter().any(|b| b["type"] == "queue" && b["queueName"] == "jobs" && b["name"] == "outjobs"));
}

#[test]
fn every_setting_is_set_in_azure_or_documented_and_listed_locally() {
    let settings = app_settings();
    let local: Value = serde_json::from_str(&read("local.settings.json.example")).unwrap();
    let local = local["Values"].as_object().expect("local.settings.json.example has Values");
    let names: BTreeSet<&str> = handler::config::SETTINGS.iter().map(|s| s.name).collect();

    for s in handler::config::SETTINGS {
        if s.example().is_none() {
            continue; // the host's own host.json overrides: neither app settings nor local Values
        }
        let set = settings.contains(s.name);
        let absent = AZURE_ONLY_ABSENT.iter().find(|(n, _)| *n == s.name);
        assert!(set || absent.is_some(), "{}: neither in the Bicep app settings nor in AZURE_ONLY_ABSENT", s.name);
        assert!(!set || absent.is_none(), "{}: set in the Bicep but listed in AZURE_ONLY_ABSENT", s.name);
        assert!(set || !s.required(), "{}: required, so the Bicep must set it", s.name);
        assert!(local.contains_key(s.name), "{}: missing from local.settings.json.example Values", s.name);
    }
    for (name, why) in AZURE_ONLY_ABSENT {
        assert!(names.contains(name), "AZURE_ONLY_ABSENT lists {name}, which the handler does not read");
        assert!(!why.is_empty());
    }

    // Flex Consumption deprecates these; the runtime is functionAppConfig.runtime.
    for forbidden in ["FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"] {
        assert!(!settings.contains(forbidden), "{forbidden} must not be set on Flex Consumption");
    }
    // System-assigned identity: no client id anywhere, plain AAD for Application Insights.
    assert!(!settings.contains("AzureWebJobsStorage__clientId") && !settings.contains("AzureWebJobsStorage"));
    let function = bicep("infra/app/function.bicep");
    assert!(function.contains("AzureWebJobsStorage__credential: 'managedidentity'"));
    assert!(function.contains("APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'"));
    assert!(settings.contains("APPLICATIONINSIGHTS_CONNECTION_STRING"));
    assert!(function.contains("AZURE_TOKEN_CREDENTIALS: 'ManagedIdentityCredential'"));
}

#[test]
fn role_guids_match_their_names_and_assignments_use_the_map() {
    let rbac = bicep("infra/app/rbac.bicep");
    let map_block = block(&rbac, "var roles =");
    let table: BTreeMap<&str, &str> = ROLE_TABLE.iter().copied().collect();
    let mut map = BTreeMap::new();
    for line in map_block.lines().map(str::trim).filter(|l| l.starts_with('\'')) {
        let (name, guid) = line.split_once(':').expect("'Name': 'guid'");
        let (name, guid) = (unquote(name.trim()).unwrap(), unquote(guid.trim()).unwrap());
        assert_eq!(table.get(name.as_str()), Some(&guid.as_str()), "role `{name}` has the wrong GUID");
        map.insert(name, guid);
    }
    assert!(map.len() >= 8, "roles map too small: {map:?}");

    // GUID literals appear nowhere in infra/ but in that map.
    for file in infra_files() {
        let text = read(&file);
        let text = if file.ends_with("rbac.bicep") { text.replace(map_block, "") } else { text };
        assert_eq!(guids(&text), Vec::<String>::new(), "{file}: role GUIDs belong in the roles map of rbac.bicep");
    }

    // Each assignment: name guid(<scope>.id, <principal>, roles[X]) with the same X as its
    // roleDefinitionId, and X in the map.
    let assignments: Vec<&str> = rbac.split("'Microsoft.Authorization/roleAssignments@").skip(1).collect();
    assert!(assignments.len() >= 10, "expected the app's and the user's role assignments");
    for a in assignments {
        let a = block(a, "=");
        let scope = values_of_raw(a, "scope");
        let name = values_of_raw(a, "name");
        let definition = values_of_raw(a, "roleDefinitionId");
        let principal = values_of_raw(a, "principalId");
        let role = name.split("roles['").nth(1).and_then(|r| r.split("']").next()).expect("roles[...] in name");
        assert!(map.contains_key(role), "unknown role `{role}`");
        assert_eq!(name, format!("guid({scope}.id, {principal}, roles['{role}'])"));
        assert_eq!(
            definition,
            format!("subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['{role}'])")
        );
    }
}

/// The raw text after `key:` on its line, first occurrence.
fn values_of_raw(block: &str, key: &str) -> String {
    let pattern = format!("{key}:");
    block
        .lines()
        .find_map(|l| l.trim().strip_prefix(pattern.as_str()))
        .unwrap_or_else(|| panic!("`{key}` missing in {block}"))
        .trim()
        .to_owned()
}

#[test]
fn local_auth_is_off_everywhere_and_no_key_is_read() {
    let main = bicep("infra/main.bicep");
    let openai = block(&main, "'br/public:avm/res/cognitive-services/account:");
    for needle in ["kind: 'OpenAI'", "sku: 'S0'", "disableLocalAuth: true", "customSubDomainName:", "deployments:"] {
        assert!(openai.contains(needle), "OpenAI account: `{needle}` missing");
    }
    let insights = block(&main, "'br/public:avm/res/insights/component:");
    assert!(insights.contains("disableLocalAuth: true"), "Application Insights must disable local auth");
    let storage = block(&main, "'br/public:avm/res/storage/storage-account:");
    for needle in ["allowSharedKeyAccess: false", "allowBlobPublicAccess: false", "minimumTlsVersion: 'TLS1_2'"] {
        assert!(storage.contains(needle), "storage account: `{needle}` missing");
    }
    let mut files = infra_files();
    files.push("azure.yaml".into());
    for file in files {
        let text = read(&file).to_lowercase();
        for forbidden in ["api-key", "listkeys(", "accountkey=", "primarykey", "secondarykey"] {
            assert!(!text.contains(forbidden), "{file} contains `{forbidden}`");
        }
    }
}

#[test]
fn the_function_app_is_flex_consumption_custom_with_a_system_assigned_identity() {
    let function = bicep("infra/app/function.bicep");
    for needle in [
        "'br/public:avm/res/web/serverfarm:",
        "skuName: 'FC1'",
        "reserved: true",
        "'br/public:avm/res/web/site:",
        "kind: 'functionapp,linux'",
        "systemAssigned: true",
        "type: 'blobContainer'",
        "type: 'SystemAssignedIdentity'",
        "instanceMemoryMB: instanceMemoryMB",
        "maximumInstanceCount: maximumInstanceCount",
        "alwaysOn: false",
    ] {
        assert!(function.contains(needle), "function.bicep: `{needle}` missing");
    }
    let runtime = block(&function, "runtime:");
    assert!(runtime.contains("name: 'custom'") && runtime.contains("version: '1.0'"), "{runtime}");
    assert!(!function.contains("userAssignedResourceIds"), "the app must have no user-assigned identity");
    assert!(function.contains("'azd-service-name': 'api'"), "azd finds the app by this tag");
}

#[test]
fn no_setting_depends_on_the_instance_count() {
    let function = bicep("infra/app/function.bicep");
    let main = bicep("infra/main.bicep");
    let uses = function.matches("maximumInstanceCount").count();
    // Declared, and handed to the site's scale settings: nothing else.
    assert_eq!(uses, 3, "infra/app/function.bicep uses maximumInstanceCount beyond the scale limit");
    assert!(function.contains("maximumInstanceCount: maximumInstanceCount"));
    let settings = block(&function, "var appSettings");
    assert!(!settings.contains("maximumInstanceCount"), "{settings}");
    assert!(settings.contains("AOAI_TOKENS_PER_MINUTE: string(aoaiTokensPerMinute)"), "{settings}");
    assert!(main.contains("param aoaiTokensPerMinute int = 0"), "the per-instance cap defaults to none");
}

#[test]
fn azd_parameters_outputs_and_service_are_wired() {
    let main = bicep("infra/main.bicep");
    assert!(main.contains("targetScope = 'subscription'"));
    assert!(main.contains("'Microsoft.Resources/resourceGroups@"));
    let params: Value = serde_json::from_str(&read("infra/main.parameters.json")).unwrap();
    let params = params["parameters"].as_object().unwrap();
    for (name, env) in
        [("environmentName", "AZURE_ENV_NAME"), ("location", "AZURE_LOCATION"), ("principalId", "AZURE_PRINCIPAL_ID")]
    {
        assert_eq!(params[name]["value"], format!("${{{env}}}"));
    }
    for name in params.keys() {
        assert!(main.contains(&format!("param {name} ")), "main.parameters.json sets unknown param {name}");
    }
    for param in [
        "principalType string = 'User'",
        "modelName string = 'gpt-5.4-mini'",
        "modelVersion string = '2026-03-17'",
        "modelSkuName string = 'GlobalStandard'",
        "openAiApiVersion string = 'v1'",
        "maximumInstanceCount int = 40",
        "grantPrincipalStorageAccess bool = false",
    ] {
        assert!(main.contains(&format!("param {param}")), "param {param} missing");
    }
    assert_eq!(params["maximumInstanceCount"]["value"], "${AZURE_FUNCTION_MAX_INSTANCES=40}");
    for output in [
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_DEPLOYMENT",
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_RESOURCE_GROUP",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_TENANT_ID",
    ] {
        assert!(main.contains(&format!("output {output} string")), "output {output} missing");
    }
    let azure_yaml = read("azure.yaml");
    for needle in ["language: custom", "host: function", "dist: dist/app.zip", "./scripts/package"] {
        assert!(azure_yaml.contains(needle), "azure.yaml: `{needle}` missing");
    }
}

/// Each role assignment of rbac.bicep as (resource name, role, scope, principal, condition).
fn role_assignments() -> Vec<(String, String, String, String, String)> {
    let rbac = bicep("infra/app/rbac.bicep");
    let mut out = Vec::new();
    for chunk in rbac.split("\nresource ").skip(1) {
        let Some((header, body)) = chunk.split_once("'Microsoft.Authorization/roleAssignments@") else { continue };
        let resource = header.trim().to_owned();
        let condition = body.lines().next().unwrap_or_default().split(" if ").nth(1).unwrap_or_default().to_owned();
        let body = block(body, "=");
        let name = values_of_raw(body, "name");
        let role = name.split("roles['").nth(1).and_then(|r| r.split("']").next()).unwrap_or_default().to_owned();
        out.push((resource, role, values_of_raw(body, "scope"), values_of_raw(body, "principalId"), condition));
    }
    out
}

#[test]
fn the_queue_roles_let_the_extension_release_and_renew_messages() {
    let assignments = role_assignments();
    let app: Vec<(&str, &str)> = assignments
        .iter()
        .filter(|a| a.3 == "appPrincipalId")
        .map(|(_, role, scope, _, _)| (role.as_str(), scope.as_str()))
        .collect();
    // Update Message (queues/messages/write) is in Storage Queue Data Contributor only: the
    // trigger queue and the poison queue, each at queue scope.
    for queue in ["jobsQueue", "jobsPoisonQueue"] {
        let scope = format!("storageAccount::queueService::{queue}");
        assert!(app.contains(&("Storage Queue Data Contributor", scope.as_str())), "{queue}: {app:?}");
    }
    // No queue role at account scope, and no Reader/Processor pair that lacks Update Message.
    for (role, scope) in &app {
        if role.starts_with("Storage Queue") {
            assert!(scope.starts_with("storageAccount::queueService::"), "{role} at {scope}");
        }
        assert!(
            !matches!(*role, "Storage Queue Data Reader" | "Storage Queue Data Message Processor"),
            "{role}: without queues/messages/write the extension's Update Message gets 403"
        );
    }
    assert!(app.contains(&("Storage Queue Data Message Sender", "storageAccount::queueService::resultsQueue")));
}

#[test]
fn the_deploying_principal_gets_least_privilege_storage_access_only_on_request() {
    let main = bicep("infra/main.bicep");
    assert!(main.contains("param grantPrincipalStorageAccess bool = false"));
    assert!(bicep("infra/app/rbac.bicep").contains("param grantUserStorageAccess bool = false"));
    let user: Vec<_> = role_assignments().into_iter().filter(|a| a.3 == "userPrincipalId").collect();
    assert!(user.len() >= 4, "{user:?}");
    for (resource, role, scope, _, condition) in &user {
        if role.starts_with("Storage") {
            // Containers and queues, never the account (which holds the deployed code).
            assert_ne!(scope, "storageAccount", "{resource}: {role} on the whole account");
            assert!(
                scope == "storageAccount::blobService::resultsContainer"
                    || scope.starts_with("storageAccount::queueService::"),
                "{resource}: {role} at {scope}"
            );
            assert!(condition.contains("withUserStorage"), "{resource}: only when asked for ({condition})");
        }
    }
}

#[test]
fn the_log_analytics_workspace_disables_local_auth() {
    let main = bicep("infra/main.bicep");
    assert!(
        main.contains("module logAnalytics 'app/log-analytics.bicep'"),
        "the workspace comes from the local module"
    );
    assert!(!main.contains("avm/res/operational-insights/workspace"));
    let workspace = bicep("infra/app/log-analytics.bicep");
    let features = block(&workspace, "features:");
    assert!(features.contains("disableLocalAuth: true"), "{features}");
    assert!(workspace.contains("'Microsoft.OperationalInsights/workspaces@"));
}

#[test]
fn the_default_model_is_current_with_its_checked_dates_written_down() {
    let main = read("infra/main.bicep");
    // The date of the check and the model's retirement date, in the Bicep and in the docs.
    for needle in ["checked on 2026-12-01", "retires on 2027-09-21"] {
        assert!(main.contains(needle), "main.bicep: `{needle}` missing");
    }
    let docs = read("docs/troubleshooting.md");
    for needle in ["gpt-5.4-mini", "2026-03-17", "2027-09-21", "2026-12-01"] {
        assert!(docs.contains(needle), "docs/troubleshooting.md: `{needle}` missing");
    }
}

#[test]
fn the_helpers_parse_what_they_should() {
    assert_eq!(guids("x 5e0bd9bd-7b93-4f28-af87-19fc36ad61bd y").len(), 1);
    assert!(guids("deadbeef-not-a-guid").is_empty());
    let text = "var q = 'jobs'\nx: {\n  a: [ { name: q }\n { name: 'results' } ]\n}\n";
    let vars = string_vars(text);
    assert_eq!(values_of(block(text, "x:"), "name", &vars), BTreeSet::from(["jobs".into(), "results".into()]));
    assert_eq!(object_keys("{\n  A: 'x'\n  B: {\n    C: 1\n  }\n}"), BTreeSet::from(["A".into(), "B".into()]));
}

/// `POST /api/jobs` reads `results/{id}.json` itself (the id check of docs/reliability.md): with
/// the handler's own credential (the system-assigned identity, as the storage connection uses),
/// at the blob endpoint of the identity-based connection, so the app needs a blob data role that
/// reads the `results` container.
#[test]
fn the_submit_can_read_results_with_the_apps_identity() {
    let settings = app_settings();
    assert!(settings.contains("AzureWebJobsStorage__blobServiceUri"), "the handler reads the Blob endpoint from it");
    assert!(handler::config::SETTINGS.iter().any(|s| s.name == "AzureWebJobsStorage__blobServiceUri"));
    assert!(!settings.contains("AzureWebJobsStorage__clientId") && !settings.contains("AZURE_CLIENT_ID"));
    let readers = ["Storage Blob Data Owner", "Storage Blob Data Contributor", "Storage Blob Data Reader"];
    let can_read = role_assignments().into_iter().any(|(_, role, scope, principal, condition)| {
        principal == "appPrincipalId"
            && condition.is_empty()
            && readers.contains(&role.as_str())
            && (scope == "storageAccount" || scope == "storageAccount::blobService::resultsContainer")
    });
    assert!(can_read, "no unconditional blob data role of the app covers the results container");
}

/// The worker claims each job id by creating `claims/{id}` with its own identity (docs/reliability.md
/// "Job ids and digests"): the container exists, an unconditional blob data role of the app may
/// create blobs in it, and a lifecycle rule deletes old claims.
#[test]
fn the_worker_can_claim_ids_in_the_claims_container() {
    let main = bicep("infra/main.bicep");
    let vars = string_vars(&main);
    let storage = block(&main, "'br/public:avm/res/storage/storage-account:");
    let containers = values_of(block(storage, "blobServices:"), "name", &vars);
    let claims = handler::storage::CLAIMS_CONTAINER;
    assert!(containers.contains(claims), "container `{claims}` not created (have {containers:?})");
    assert!(
        !["results", "inputs"].contains(&claims),
        "claims share no container with Results or stored jobs, where a crafted id could name another blob"
    );
    let writers = ["Storage Blob Data Owner", "Storage Blob Data Contributor"];
    let can_create = role_assignments().into_iter().any(|(_, role, scope, principal, condition)| {
        principal == "appPrincipalId"
            && condition.is_empty()
            && writers.contains(&role.as_str())
            && (scope == "storageAccount" || scope == "storageAccount::blobService::claimsContainer")
    });
    assert!(can_create, "no unconditional blob data role of the app may create blobs in `{claims}`");
    let lifecycle = block(storage, "managementPolicyRules:");
    let var = vars.iter().find(|(_, v)| v.as_str() == claims).map(|(k, _)| k.clone()).expect("a var for the container");
    assert!(
        lifecycle.contains(&format!("'${{{var}}}/'")) || lifecycle.contains(&format!("'{claims}/'")),
        "the lifecycle rule filters on the claims container: {lifecycle}"
    );
    assert!(lifecycle.contains("delete:") && lifecycle.contains("daysAfterModificationGreaterThan"), "{lifecycle}");
}
