// Keyless Azure OpenAI jobs on Azure Functions Flex Consumption (Rust custom handler).
//
// Everything authenticates with Microsoft Entra ID: the Function App's system-assigned
// managed identity talks to Storage, Azure OpenAI and Application Insights, and the accounts
// refuse shared-key / local authentication. Deployed by `azd up` (see azure.yaml, docs/deploy.md).
//
// Azure Verified Modules are used where they fit. Module versions are pinned to releases whose
// parameters were read from Azure/bicep-registry-modules; storage-account 0.12.0 is the newest
// release whose outputs do not read the account's access keys (later releases export them as
// secure outputs even when the keys are disabled). The Log Analytics workspace is a local
// module (app/log-analytics.bicep) so that its local authentication can be disabled. Role assignments live in app/rbac.bicep: they need the app's principal id, which
// exists only after the site, and the storage account must exist before the site.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; every resource name is derived from it.')
param environmentName string

@minLength(1)
@description('Region for every resource. It must offer Flex Consumption (and, unless openAiLocation is set, the model below).')
@metadata({ azd: { type: 'location' } })
param location string

@description('Region of the Azure OpenAI account, when the model is not offered in `location`.')
param openAiLocation string = location

@description('Object id of the principal running azd (azd sets AZURE_PRINCIPAL_ID). It gets Cognitive Services OpenAI User, to run the handler and `handler doctor` locally. Empty = no role for it.')
param principalId string = ''

@description('Kind of principalId: User for a person running azd, ServicePrincipal for a pipeline.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Also give principalId data access to what the app stores (not the whole account, not the deployed code): Storage Blob Data Contributor on the `results` container and Storage Queue Data Contributor on the `jobs`, `jobs-poison` and `results` queues, to inspect and requeue jobs and results with `az storage ... --auth-mode login`. Off by default (least privilege): set it to true in infra/main.parameters.json to turn it on.')
param grantPrincipalStorageAccess bool = false

// The default model, checked on 2026-12-01 against Microsoft's retirement schedule
// (learn.microsoft.com/azure/foundry/openai/concepts/model-retirement-schedule, page updated
// 2026-09-02) and model tables (MicrosoftDocs/azure-ai-docs, foundry/foundry-models
// region availability, 2026-09-03): gpt-5.4-mini version 2026-03-17 is Generally Available,
// offered on Global Standard in every listed region, and retires on 2027-09-21.
// The former default, gpt-4o-mini 2024-07-18, is deprecated (no new deployments; its Global
// Standard retirement was 2026-10-01 in the schedule of early 2026), and gpt-4.1-mini, its
// listed replacement, retired on 2026-10-14. gpt-5.4-mini is a reasoning model: the handler
// finds the lowest reasoning effort it accepts (`none`) by itself (docs/troubleshooting.md).
// Re-check the schedule before the retirement date and move modelName/modelVersion.
@description('Chat model to deploy (any current chat model works: reasoning or not). Default checked 2026-12-01: retires 2027-09-21.')
param modelName string = 'gpt-5.4-mini'

@description('Model version.')
param modelVersion string = '2026-03-17'

@description('Deployment SKU (GlobalStandard has the widest regional availability and the highest default quota).')
param modelSkuName string = 'GlobalStandard'

@description('Deployment capacity in units of 1,000 tokens per minute (quota permitting).')
@minValue(1)
param modelCapacity int = 30

@description('Name of the Azure OpenAI deployment (AZURE_OPENAI_DEPLOYMENT).')
param modelDeploymentName string = modelName

@description('AZURE_OPENAI_API_VERSION: `v1` (the /openai/v1 route, which serves every current model; Microsoft\'s recommendation), or a dated api-version (reasoning models need 2024-12-01-preview or later).')
param openAiApiVersion string = 'v1'

// Flex Consumption's maximum instance count, checked on 2026-12-01: the current docs
// (azure-functions/event-driven-scaling.md, ms.date 2026-08-03, "Limit scale-out") give 1 as
// the lowest maximum, 1000 as the highest and 100 as the default; the same page until 2025,
// the Flex how-to and the Az.Functions FC1 stack data give 40 as the lowest. 40 is accepted
// under both rules, so the default provisions in every region; 10 was refused where the
// older floor still applies.
@description('Flex Consumption scale-out limit of the Function App (1..1000 in current docs; 40, the default, is also the floor some regions enforced). No setting depends on it: the instances share the deployment's quota by pacing themselves from its answers.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each Flex Consumption instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('AOAI_MAX_CONCURRENCY: Azure OpenAI calls in flight per instance.')
@minValue(1)
@maxValue(256)
param aoaiMaxConcurrency int = 8

@description('AOAI_TOKENS_PER_MINUTE: optional cap per instance, for an app sharing the deployment with other apps (0 = none: the instances pace themselves to the deployment).')
@minValue(0)
param aoaiTokensPerMinute int = 0

@description('LOG_FORMAT of the handler in Azure: json lines are easy to query in Application Insights (traces | extend j = parse_json(message)).')
@allowed([
  'text'
  'json'
])
param logFormat string = 'json'

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }

var functionAppName = 'func-${resourceToken}'
var storageAccountName = 'st${resourceToken}'
var openAiAccountName = 'oai-${resourceToken}'

// Storage names used by the function.json bindings (tests/infra_consistency.rs checks them):
// process_job triggers on `jobs`, submit_jobs writes to `jobs`, process_job writes to the
// `results` queue and reads/writes blobs `results/{Id}.json`, get_job reads `results/{id}.json`;
// put_job (PUT /api/jobs/{id}) writes a large job to blob `inputs/{id}.json` and a reference to
// `jobs`, and process_job reads `inputs/{Id}.json` back. process_job claims each job id before
// running it by creating blob `claims/{id}` (If-None-Match: *, the input digest): across
// instances, one input owns an id. Claims are a few bytes each; the lifecycle rule below
// deletes them after claimRetentionDays.
// The host moves a message that failed maxDequeueCount times to `jobs-poison`; creating it here
// is what lets the app do without queue-management rights (see app/rbac.bicep).
var jobsQueueName = 'jobs'
var jobsPoisonQueueName = 'jobs-poison'
var resultsQueueName = 'results'
var resultsContainerName = 'results'
var inputsContainerName = 'inputs'
var claimsContainerName = 'claims'
// Longer than any message can live (queue message TTL, 7 days by default) so no job still in
// flight loses its claim; after that the Result blob (its digest) keeps answering for the id.
var claimRetentionDays = 30
// Flex Consumption keeps the deployed package (dist/app.zip) in this container.
var deploymentContainerName = 'app-package'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module storage 'br/public:avm/res/storage/storage-account:0.12.0' = {
  name: 'storage'
  scope: rg
  params: {
    name: storageAccountName
    location: location
    tags: tags
    kind: 'StorageV2'
    skuName: 'Standard_LRS'
    // Entra ID only: the host, the bindings and people all use RBAC data roles.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    dnsEndpointType: 'Standard'
    // Flex Consumption without VNet integration reaches storage over its public endpoint.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: [
        { name: deploymentContainerName, publicAccess: 'None' }
        { name: resultsContainerName, publicAccess: 'None' }
        { name: inputsContainerName, publicAccess: 'None' }
        { name: claimsContainerName, publicAccess: 'None' }
      ]
    }
    managementPolicyRules: [
      {
        name: 'expire-claims'
        enabled: true
        type: 'Lifecycle'
        definition: {
          filters: {
            blobTypes: [ 'blockBlob' ]
            prefixMatch: [ '${claimsContainerName}/' ]
          }
          actions: {
            baseBlob: {
              delete: { daysAfterModificationGreaterThan: claimRetentionDays }
            }
          }
        }
      }
    ]
    queueServices: {
      queues: [
        { name: jobsQueueName }
        { name: jobsPoisonQueueName }
        { name: resultsQueueName }
      ]
    }
  }
}

// Log Analytics workspace with local (shared-key) authentication disabled: queries and
// ingestion only with Entra ID. A small local module, because the AVM workspace releases whose
// outputs do not read the shared keys (<= 0.11.1) cannot set features.disableLocalAuth.
module logAnalytics 'app/log-analytics.bicep' = {
  name: 'log-analytics'
  scope: rg
  params: {
    name: 'log-${resourceToken}'
    location: location
    tags: tags
    retentionInDays: 30
  }
}

module appInsights 'br/public:avm/res/insights/component:0.8.0' = {
  name: 'app-insights'
  scope: rg
  params: {
    name: 'appi-${resourceToken}'
    location: location
    tags: tags
    kind: 'web'
    applicationType: 'web'
    workspaceResourceId: logAnalytics.outputs.resourceId
    // Entra ID ingestion only: the app sends telemetry as its identity (Monitoring Metrics
    // Publisher, app/rbac.bicep) with APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD.
    disableLocalAuth: true
    retentionInDays: 30
  }
}

module openAi 'br/public:avm/res/cognitive-services/account:0.18.0' = {
  name: 'openai'
  scope: rg
  params: {
    name: openAiAccountName
    location: openAiLocation
    tags: tags
    kind: 'OpenAI'
    sku: 'S0'
    // Token authentication needs the custom subdomain (https://<name>.openai.azure.com).
    customSubDomainName: openAiAccountName
    // Entra ID only: requests must carry a bearer token; the account issues no usable API key.
    disableLocalAuth: true
    // The module's default is Disabled when no network ACLs are given; this app calls the
    // public endpoint (no VNet), so enable it explicitly.
    publicNetworkAccess: 'Enabled'
    deployments: [
      {
        name: modelDeploymentName
        model: {
          format: 'OpenAI'
          name: modelName
          version: modelVersion
        }
        sku: {
          name: modelSkuName
          capacity: modelCapacity
        }
        // The version is pinned; move only when Azure retires it.
        versionUpgradeOption: 'OnceCurrentVersionExpired'
      }
    ]
  }
}

module functionApp 'app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    appInsightsName: appInsights.outputs.name
    openAiEndpoint: openAi.outputs.endpoint
    openAiDeploymentName: modelDeploymentName
    openAiApiVersion: openAiApiVersion
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    aoaiMaxConcurrency: aoaiMaxConcurrency
    aoaiTokensPerMinute: aoaiTokensPerMinute
    logFormat: logFormat
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    jobsQueueName: jobsQueueName
    jobsPoisonQueueName: jobsPoisonQueueName
    resultsQueueName: resultsQueueName
    resultsContainerName: resultsContainerName
    openAiAccountName: openAi.outputs.name
    appInsightsName: appInsights.outputs.name
    appPrincipalId: functionApp.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
    grantUserStorageAccess: grantPrincipalStorageAccess
  }
}

// Outputs: azd stores them in .azure/<env>/.env (`azd env get-values`), so the handler and
// `handler doctor` can run locally against the deployed resources with the Azure CLI credential.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_URL string = 'https://${functionApp.outputs.defaultHostname}'
output AZURE_FUNCTION_APP_PRINCIPAL_ID string = functionApp.outputs.principalId
output AZURE_STORAGE_ACCOUNT string = storage.outputs.name
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.serviceEndpoints.blob
output AZURE_STORAGE_QUEUE_ENDPOINT string = storage.outputs.serviceEndpoints.queue
output AZURE_OPENAI_ACCOUNT string = openAi.outputs.name
output AZURE_OPENAI_ENDPOINT string = openAi.outputs.endpoint
output AZURE_OPENAI_DEPLOYMENT string = modelDeploymentName
output AZURE_OPENAI_API_VERSION string = openAiApiVersion
output APPLICATIONINSIGHTS_NAME string = appInsights.outputs.name
